"""bench/bench_ead_kernel.py: its deviation measure and its table against hand-made values."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(
        "bench_ead_kernel", REPO / "bench" / "bench_ead_kernel.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_ead_kernel"] = module
    spec.loader.exec_module(module)
    return module


def test_deviation_counts_only_features_near_the_atoms_largest(bench):
    ref = np.array([[100.0, 2.0, 0.5, 0.0], [1.0, 0.02, 1e-5, 1e-3]])
    ours = ref.copy()
    ours[0, 0] *= 1 + 3e-13  # counted (the largest)
    ours[0, 1] *= 1 + 5e-13  # counted: 2.0 >= 1e-2 * 100
    ours[0, 2] *= 1 + 1e-6  # ignored: 0.5 < 1e-2 * 100
    ours[1, 1] *= 1 + 4e-13  # counted: 0.02 >= 1e-2 * 1
    ours[1, 3] *= 2.0  # ignored: 1e-3 < 1e-2 * 1
    assert bench.deviation(ours, ref) == pytest.approx(5e-13, rel=1e-3)
    assert bench.deviation(ref, ref) == 0.0


def test_table_has_every_variant_side_by_side(bench):
    variant = {"atoms_per_s": 1000.0, "gflops": 10.0, "fraction_of_dgemm": 0.25}
    row = {
        "set": "eadset2",
        "dataset": "perov_5",
        "dgemm_gflops": 40.0,
        "variants": [
            {**variant, "label": "old", "bitwise": True, "max_rel_dev_significant": 0.0},
            {
                **variant,
                "label": "new",
                "atoms_per_s": 2000.0,
                "gflops": 20.0,
                "fraction_of_dgemm": 0.5,
                "bitwise": False,
                "max_rel_dev_significant": 5.2e-14,
            },
        ],
    }
    table = bench.markdown([row]).splitlines()
    assert "old → new" in table[0]
    assert table[2] == (
        "| eadset2 | perov_5 | 40.0 | 1,000 → 2,000 | 10.0 → 20.0 | 25% → 50% | 5.2e-14 |"
    )
