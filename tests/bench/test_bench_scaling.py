"""bench/bench_scaling.py: its pure helpers against hand-made references, and its memory
measurement against an allocation of known size (a smoke test of the script, not a benchmark)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location(
        "bench_scaling", REPO / "bench" / "bench_scaling.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scaling"] = module
    spec.loader.exec_module(module)
    return module


bs = _load()


def test_fit_exponent_recovers_a_power_law_above_min_atoms():
    n = np.array([5, 10, 20, 50, 100, 200, 500, 1000])
    t = 3e-5 * n**1.37
    t[n < 20] = 1.0  # per-structure overhead: must be left out of the fit
    fit = bs.fit_exponent(n, t, min_atoms=20)
    assert fit["points"] == 6
    assert fit["b"] == pytest.approx(1.37, abs=1e-12)
    assert fit["a"] == pytest.approx(3e-5, rel=1e-10)


def test_fit_exponent_of_noisy_linear_data_and_degenerate_input():
    rng = np.random.default_rng(0)
    n = np.geomspace(20, 1000, 40)
    t = 2e-4 * n * np.exp(rng.normal(0, 0.05, n.size))
    assert bs.fit_exponent(n, t, 20)["b"] == pytest.approx(1.0, abs=0.05)
    # zero values (a peak below the counter's resolution) are skipped; one size: no exponent
    assert bs.fit_exponent([100, 100, 200], [1.0, 2.0, 0.0], 20)["points"] == 2
    assert math.isnan(bs.fit_exponent([100, 100, 200], [1.0, 2.0, 0.0], 20)["b"])
    # values at or below min_value (memory peaks under 1 MiB) are left out too
    fit = bs.fit_exponent([100, 200, 400, 800], [0.5, 2.0, 4.0, 8.0], 20, min_value=1.0)
    assert fit["points"] == 3 and fit["b"] == pytest.approx(1.0)


def test_supercell_factors_near_target_and_near_cube():
    assert bs.supercell_factors((4.0, 4.0, 4.0), 1, 1000) == (10, 10, 10)
    assert bs.supercell_factors((3.0, 3.0, 3.0), 5, 5) == (1, 1, 1)
    # lengths 5, 5, 10 Å: (6, 6, 3) makes a 30 Å cube of 216 atoms (within 15 % of 200)
    assert bs.supercell_factors((5.0, 5.0, 10.0), 2, 200) == (6, 6, 3)
    for atoms, target in [(4, 50), (8, 500), (5, 1000), (7, 20)]:
        a, b, c = bs.supercell_factors((5.1, 6.3, 7.7), atoms, target)
        assert 0.8 * target <= a * b * c * atoms <= 1.25 * target


def test_formula_atoms():
    assert bs.formula_atoms('"Ba2 Cu1 H14 C6 O16"') == 39
    assert bs.formula_atoms("'Fe O'") == 2
    assert bs.formula_atoms("Zn4 C24 H12 O13") == 53


def test_spread_sample_is_log_spaced_and_distinct():
    sizes = list(range(1, 1001)) * 2
    picks = bs.spread_sample(sizes, 4)
    assert len(set(picks)) == 4
    assert [sizes[i] for i in picks] == [1, 10, 100, 1000]
    assert bs.spread_sample([30, 10, 20], 5) == [1, 2, 0]


def test_status_kib():
    text = "Name:\tpython\nVmHWM:\t  123456 kB\nVmRSS:\t   4096 kB\nThreads:\t1\n"
    assert bs.status_kib(text) == {"VmHWM": 123456, "VmRSS": 4096}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_measure_sees_an_allocation_of_known_size():
    size = 10_000_000  # float64: 76.3 MiB, touched by np.ones

    def allocate():
        a = np.ones(size)
        return float(a[-1])

    got = bs.measure(allocate)
    assert got["peak_mib"] == pytest.approx(size * 8 / 2**20, rel=0.05)
    assert got["repeats"] >= 3 and got["cpu_s"] > 0
    assert bs.measure(lambda: None)["peak_mib"] < 1.0


def test_run_point_counts_the_edges_ase_finds():
    from io import BytesIO

    from ase.build import bulk
    from ase.io import write
    from ase.neighborlist import neighbor_list

    atoms = bulk("Si", "diamond", a=5.43)
    buffer = BytesIO()
    write(buffer, atoms, format="cif")
    point = bs.run_point(buffer.getvalue().decode(), tasks=("neighbours", "batch"))
    assert point["atoms"] == 2
    assert point["edges"] == len(neighbor_list("i", atoms, 8.0))
    # batch keeps the nearest 32 of each atom (the trainer's default max_neighbors)
    assert point["kept_edges"] == 2 * 32
    assert point["neighbours"]["cpu_s"] > 0


def test_markdown_and_plot_of_synthetic_results(tmp_path):
    def point(n):
        return {
            "atoms": n,
            "edges_per_atom": 100.0,
            **{t: {"cpu_s": 1e-4 * n, "peak_mib": 0.01 * n, "repeats": 3} for t in bs.TASKS},
        }

    results = {
        "formulas": {"mp-1": "Si"},
        "supercells": {"mp-1": [point(n) for n in (8, 64, 512)]},
        "qmof": [point(n) for n in (20, 40, 80)],
        "build": [
            {
                "structures": n,
                "atoms": 10 * n,
                "cpu_s": 1.0,
                "peak_rss_kib": 2**18,
                "RssAnon": 2**17,
                "RssFile": 2**16,
            }
            for n in (100, 200)
        ],
        "meta": {
            "date": "2026-01-01",
            "cpu": "CPU",
            "cores": 2,
            "python": "3",
            "quick": True,
            "sizes": [8, 64, 512],
            "wall_s": 60.0,
        },
    }
    results["fits"] = bs.analyse(results)
    assert results["fits"]["time"]["all supercells"]["graph"]["b"] == pytest.approx(1.0)
    text = bs.markdown(results)
    assert "| graph | 1.00 | 1.00 | 1.00 |" in text
    bs.plot(results, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000
