"""bench/bench_loader.py: its pure helpers against hand-made references (a smoke test of the
script, not a benchmark)."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location(
        "bench_loader", REPO / "bench" / "bench_loader.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_loader"] = module
    spec.loader.exec_module(module)
    return module


bl = _load()


def test_proc_cpu_seconds_follows_this_process_busy_loop():
    before, t0 = bl.proc_cpu_seconds(os.getpid()), os.times()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    spent = bl.proc_cpu_seconds(os.getpid()) - before
    reference = (os.times().user - t0.user) + (os.times().system - t0.system)
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert spent >= 0.25 and abs(spent - reference) <= 2 * tick + 0.02


def test_implied_rate_is_the_slower_of_workers_and_main():
    assert bl.implied_rate(1e-3, 1e-4, 4) == pytest.approx(4000)  # 4 workers at 1 ms each
    assert bl.implied_rate(1e-3, 5e-4, 4) == pytest.approx(2000)  # the main process limits
    assert bl.implied_rate(0.0, 2e-4, 4) == pytest.approx(5000)


def test_subset_csv_keeps_header_and_whole_multiline_records(tmp_path):
    src = tmp_path / "in.csv.gz"
    rows = [["material_id", "cif"]] + [
        [f"mp-{i}", f"data_{i}\nline, with comma\n"] for i in range(5)
    ]
    with gzip.open(src, "wt", newline="") as fh:
        csv.writer(fh).writerows(rows)
    dst = tmp_path / "out.csv"
    assert bl.subset_csv(src, dst, 3) == 3
    with open(dst, newline="") as fh:
        assert list(csv.reader(fh)) == rows[:4]
    assert bl.subset_csv(src, dst, 50) == 5


def test_float16_error_against_hand_computed_roundings():
    std = np.array([1.0, 0.5, 2.0])
    err = bl.Float16Error(std)
    # float16 spacing is 2**-10 at 1 and 2**-4 at 1000: 1 + 2**-12 rounds to 1 (error 2**-12),
    # 1000.03125 to 1000 (error 2**-5); 7e4 is beyond 65,504; 0 is exact
    err.add(np.array([[1 + 2**-12, 1000.03125, 0.0], [0.0, 0.0, 7e4]], np.float32))
    d = err.to_dict()
    assert d["values"] == 6 and d["overflow"] == 1 and d["features_overflowing"] == 1
    assert d["max_abs"] == pytest.approx(2**-5)
    assert d["max_rel"] == d["max_rel_normal"] == pytest.approx(2**-12 / (1 + 2**-12))
    assert d["max_std_units"] == pytest.approx(2**-5 / 0.5) and d["above_0.01_std"] == 1
    assert d["mean_std_units"] == pytest.approx((2**-12 / 1.0 + 2**-5 / 0.5) / 5)
    # below float16's smallest normal the relative error reaches 1 (flushed to 0), but not
    # max_rel_normal
    tiny = bl.Float16Error(np.ones(1))
    tiny.add(np.array([[1e-8], [1.0 + 2**-12]], np.float32))
    assert tiny.max_rel == 1.0 and tiny.max_rel_normal == pytest.approx(2**-12 / (1 + 2**-12))


def test_standardised_float16_error():
    exact = np.array([[10.0, 3.0], [12.0, 3.0]])
    mean, std = np.array([11.0, 3.0]), np.array([1.0, 0.0])  # zero std: scale 1
    out = bl.standardised_float16_error(exact, mean, std)
    assert out == {"overflow": 0, "max_std_units": 0.0, "mean_std_units": 0.0}
    exact = np.array([[11.0 + 1 / 3]])
    out = bl.standardised_float16_error(exact, np.array([11.0]), np.array([1.0]))
    z = (11.0 + 1 / 3) - 11.0
    assert out["max_std_units"] == pytest.approx(abs(float(np.float16(z)) - z))
