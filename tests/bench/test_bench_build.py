"""bench/bench_build.py: the build tables' arithmetic on hand-made results, and the baseline
package it extracts from git (a smoke test of the script's helpers, not a benchmark)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

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
