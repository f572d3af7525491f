"""bench/bench_build.py: the build tables' arithmetic on hand-made results, and the baseline
package it extracts from git (a smoke test of the script's helpers, not a benchmark)."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("bench_build", REPO / "bench" / "bench_build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_build"] = module
    spec.loader.exec_module(module)
    return module


bb = _load()


def _build(dataset, jobs, code, wall_rate, cpu_rate, steady):
    return {
        "dataset": dataset,
        "jobs": jobs,
        "code": code,
        "records": 1000,
        "structures_per_s": wall_rate,
        "cpu_structures_per_s": cpu_rate,
        "steady_structures_per_s": steady,
        "main_peak_rss_mib": 100.0,
        "worker_peak_rss_mib": 90.0,
        "bytes_per_atom": 2000.0,
        "edges_per_atom": 130.0,
    }


def test_markdown_ratios_and_speed_ups():
    results = {
        "machine": {"cpu": "Test CPU", "cores": 2, "python": "3.11"},
        "date": "2026-12-01 20:00",
        "command": "python bench/bench_build.py",
        "rounds": 2,
        "baseline": "abc1234",
        "load_before": "2.00, 2.00, 2.00",
        "load_after": "3.00, 3.00, 3.00",
        "builds": [
            _build("d", 1, "current", 400.0, 450.0, 420.0),
            _build("d", 2, "current", 700.0, 440.0, 798.0),
            _build("d", 1, "baseline", 300.0, 320.0, 310.0),
        ],
        "cif_parse": {
            "d": {
                "structures": 50,
                "check_cif": {"structures_per_s": 500.0, "wall_structures_per_s": 480.0},
                "no_check_cif": {"structures_per_s": 550.0, "wall_structures_per_s": 520.0},
            }
        },
        "breakdown": {
            "d": {"total_s": 2.0, "records": 1000, "us_per_structure": {"parse": 1500.0}}
        },
        "engines": {"d": {"ours": {"structures_per_s": 3000.0, "pair_count_mismatches": 0}}},
        "reader": {},
    }
    text = bb.markdown(results)
    assert "Test CPU" in text and "load average 2.00, 2.00, 2.00 before" in text
    # jobs 2 against jobs 1 of the same code: 700/400 wall, 798/420 steady
    assert "| d (1,000 structures) | current | 2 | 700 | 1.75× | 798 | 1.90× | 440 |" in text
    assert "| d (1,000 structures) | baseline abc1234 | 1 | 300 | 1.00× |" in text
    # the parse bound: 450/500 per CPU second, 400/480 per wall second
    assert "| d | current | 50 | 500 | 480 | 550 | 450 | 0.90 | 400 | 0.83 |" in text
    assert "| d | baseline abc1234 | 50 | 500 | 480 | 550 | 320 | 0.64 | 300 | 0.62 |" in text
    assert "| parse | 1,500 |" in text and "| **total** | 2,000 |" in text


def test_implied_scaling_from_cpu_times():
    """Amdahl on CPU seconds: T1 = 10 s; with 2 jobs the main process spends 2 s (0.5 s of it
    outside the records loop: serial) and the workers 9 s, so C2 = 11 s and the 2-core wall
    time would be 0.5 + 10.5 / 2 = 5.75 s: scaling 10 / 5.75, efficiency 10 / 11."""
    one = {"main_cpu_s": 9.0, "main_loop_cpu_s": 8.0, "worker_cpu_s": 1.0, "records": 1000}
    two = {"main_cpu_s": 2.0, "main_loop_cpu_s": 1.5, "worker_cpu_s": 9.0, "records": 1000}
    got = bb.scaling(one, two)
    assert abs(got["implied_scaling"] - 10 / 5.75) < 1e-12
    assert abs(got["cpu_efficiency"] - 10 / 11) < 1e-12
    assert abs(got["serial_share"] - 0.5 / 11) < 1e-12
    assert abs(got["c2_us_per_structure"] - 11_000) < 1e-9


def test_extract_package_imports_the_revisions_builder(tmp_path):
    package = bb.extract_package("HEAD", tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fingerprint_pretrain.builder.neighbors as m; print(m.__file__)",
        ],
        env={"PYTHONPATH": str(package), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip().startswith(str(package))


def test_spread_rows_takes_evenly_spaced_rows(tmp_path):
    """10 rows, 4 kept: rows i * 10 // 4 = 0, 2, 5, 7 (by hand), the multi-line CIF fields
    intact, the header first, the rows in a shuffled order that the seed fixes."""
    header = ["material_id", "nsites", "cif"]
    rows = [[f"mp-{i}", str(i), f"data_{i}\n_cell_length_a {i}.0\n"] for i in range(10)]
    src, dst = tmp_path / "src.csv.gz", tmp_path / "dst.csv.gz"
    with gzip.open(src, "wt", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    assert bb.spread_indices(10, 4) == [0, 2, 5, 7]
    assert bb.spread_indices(3, 10) == [0, 1, 2]
    orders = []
    for seed in (0, 0, 1, 2, 3):
        assert bb.spread_rows(src, dst, 4, seed) == 4
        with gzip.open(dst, "rt", newline="") as fh:
            got = list(csv.reader(fh))
        assert got[0] == header
        assert sorted(got[1:]) == [rows[0], rows[2], rows[5], rows[7]]
        orders.append(got[1:])
    assert orders[0] == orders[1]  # same seed, same order
    assert any(order != orders[0] for order in orders[2:])  # the seed shuffles


def test_steady_rates_between_the_20_percent_commit_and_the_last_record_commit():
    """10 commits of 10 records at wall 1..10 s, main CPU 0.5 s and workers 1.5 s per commit,
    then a finalisation write (no records) much later: the window is commits 2..10 (80
    records, 8 s wall, (5 - 1) + (15 - 3) = 16 CPU s)."""
    stamps = [(0.0, 0.0, 0.0, 0)]  # the configuration's write
    stamps += [(float(k), 0.5 * k, 1.5 * k, 10) for k in range(1, 11)]
    stamps += [(100.0, 50.0, 15.0, 0)]
    got = bb.steady_rates(stamps, 100)
    assert got["steady_records"] == 80
    assert got["steady_structures_per_s"] == 10.0
    assert got["steady_cpu_structures_per_s"] == 5.0


def _pair(t1=10.0, r1=125.0, c2=11.0, r2=110.0, n=1000):
    one = {"records": n, "main_cpu_s": t1, "worker_cpu_s": 0.0, "main_loop_cpu_s": t1 - 1}
    one |= {"steady_cpu_structures_per_s": r1, "builder_import_cpu_s": 0.4}
    one["stages_cpu_s"] = {"provenance": 0.03, "finalise": 0.2, "put_in_place": 0.01}
    two = {"records": n, "main_cpu_s": 1.5, "worker_cpu_s": c2 - 1.5, "main_loop_cpu_s": 1.0}
    two["steady_cpu_structures_per_s"] = r2
    return one, two


def test_fixed_costs_arithmetic():
    """T1 = 10 s for 1,000 structures at a steady 125/s: F = 10 - 8 = 2 s; parse bound 110/s:
    ratio 100 / 110, steady ratio 125 / 110, at 46,765 structures 46,765 / (2 + 46,765 / 125)
    / 110; --jobs 2: C2 = 11 s at a steady 110/s, F = 11 - 1000 / 110, steady scaling
    2 x 110 / 125; pool: 3 s of children for 4 one-structure tasks on 2 workers."""
    one, two = _pair()
    pool = {"main_cpu_s": 0.1, "children_cpu_s": 3.0, "items": 4, "jobs": 2}
    got = bb.fixed_costs(one, two, 110.0, pool, 0.85)
    assert abs(got["fixed_cpu_s_jobs1"] - 2.0) < 1e-12
    assert abs(got["end_to_end_ratio"] - 100 / 110) < 1e-12
    assert abs(got["steady_ratio"] - 125 / 110) < 1e-12
    assert abs(got["projected_ratio"] - 46_765 / (2 + 46_765 / 125) / 110) < 1e-12
    assert abs(got["fixed_cpu_s_jobs2"] - (11 - 1000 / 110)) < 1e-12
    assert abs(got["steady_scaling"] - 2 * 110 / 125) < 1e-12
    assert abs(got["pool_start_per_worker_cpu_s"] - (3.0 - 4 / 125) / 2) < 1e-12
    assert abs(got["finalise_cpu_s"] - 0.21) < 1e-12 and got["provenance_cpu_s"] == 0.03


def test_goal_verdicts_in_the_markdown():
    """Dataset a: ratio 100 / 110 = 0.909 and implied scaling 10 / (0.5 + 10.5 / 2) = 1.74
    (scaling not met); dataset b: T1 = 12 s, C2 = 12.3 s: scaling 12 / (0.5 + 11.8 / 2) = 1.875
    (met) but ratio 83.3 / 110 = 0.758 (not met)."""
    results = {"baseline": None, "fixed_costs": {}, "scaling": {}}
    for name, (t1, c2) in {"a": (10.0, 11.0), "b": (12.0, 12.3)}.items():
        one, two = _pair(t1=t1, c2=c2)
        two["main_cpu_s"], two["main_loop_cpu_s"] = 1.5, 1.0  # serial 0.5 s
        results["scaling"][f"{name} current"] = bb.scaling(one, two)
        results["fixed_costs"][f"{name} current"] = bb.fixed_costs(one, two, 110.0, None, 0.85)
    text = "\n".join(bb.fixed_costs_markdown(results))
    assert "- a (1,000 structures): ratio 0.909 (met: ≥ 0.9)" in text
    assert "scaling 1.74× (not met: ≥ 1.85×): goal 4 **not met**" in text
    assert "- b (1,000 structures): ratio 0.758 (not met: ≥ 0.9)" in text
    assert "scaling 1.88× (met: ≥ 1.85×): goal 4 **not met**" in text
    assert "| a | current | 1,000 | 110 | 100 | 0.909 | 125 | 1.136 | 2.00 |" in text
    # the fixed-cost table: pymatgen import, builder import, no pool, provenance, finalisation
    assert "| a | 0.850 | 0.400 |  |  |  |  | 0.030 | 0.210 | 2.000 |" in text


def test_earlier_results_are_kept_below_the_new_ones():
    old = "# Store builder and reader benchmarks\n\n## Issue 21 goal 4 (2026-12-01)\n\nold text\n"
    got = bb.with_earlier("# Store builder and reader benchmarks\n\nnew text\n", old)
    head, earlier = got.split(bb.EARLIER)
    assert head == "# Store builder and reader benchmarks\n\nnew text\n\n"
    assert earlier.endswith("\n\n## Issue 21 goal 4 (2026-12-01)\n\nold text\n")
    assert got.count("# Store builder") == 1
    assert bb.with_earlier("new\n", None) == "new\n"


@pytest.mark.slow
def test_build_and_pool_runners_on_a_small_csv(tmp_path, monkeypatch):
    """The runner scripts on 40 real structures (examples/mp_20_sample.csv, commits of 32 and
    8): the 1- and 2-job stores hold the same content, only the 2-job build has worker CPU, the
    serial stages are timed, the steady window is the last commit's 8 records; the pool runner
    starts 2 workers (+ loky's resource tracker) for 4 one-structure tasks."""
    monkeypatch.setitem(
        bb.SETS, "tiny", (REPO / "examples" / "mp_20_sample.csv", ["-t", "band_gap"])
    )
    one = bb.bench_build("tiny", 1, tmp_path)
    two = bb.bench_build("tiny", 2, tmp_path)
    assert one["records"] == two["records"] == 40
    assert one["content_hash"] == two["content_hash"]
    assert one["worker_cpu_s"] == 0.0 and two["worker_cpu_s"] > 0.0
    assert one["steady_records"] == two["steady_records"] == 8
    assert one["steady_cpu_structures_per_s"] > 0.0
    assert {"open_inputs", "input_sha256", "provenance", "finalise"} <= set(one["stages_cpu_s"])
    assert 0.0 < one["stages_cpu_s"]["provenance"] <= one["stages_cpu_s"]["finalise"]
    assert 0.0 < one["builder_import_cpu_s"]
    pool = bb.pool_start("tiny", tmp_path)
    assert pool["items"] == 4 and pool["jobs"] == 2 and pool["children"] >= 2
    assert pool["children_cpu_s"] > 0.0
