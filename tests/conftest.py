"""Shared fixtures: paths to the real datasets and small real structures loaded from them.

The datasets are in ../shared/datasets beside the repository (CI has them), or in the folder
``FP_SHARED_DATASETS`` names. Where they are missing, the structures come from their samples
in examples/ instead (:data:`EXAMPLE_SAMPLES`), and a test that needs a dataset file itself
skips, naming the missing path.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import os
import sys
import warnings
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
DATASETS = Path(os.environ.get("FP_SHARED_DATASETS") or REPO.parent / "shared" / "datasets")
# The datasets that examples/ holds a sample of (every 61st / 187th row, see its README).
EXAMPLE_SAMPLES = {
    "mp_20_subset.csv.gz": EXAMPLES / "mp_20_sample.csv",
    "perov_5.csv.gz": EXAMPLES / "perov_5_sample.csv",
}

csv.field_size_limit(sys.maxsize)

needs_shared = pytest.mark.skipif(
    not DATASETS.is_dir(), reason=f"{DATASETS} missing (../shared/datasets not installed)"
)


def dataset(name: str) -> Path:
    """Path of a file in ../shared/datasets; the test skips, naming it, when it is missing."""
    path = DATASETS / name
    if not path.exists():
        pytest.skip(f"{path} missing (../shared/datasets not installed)")
    return path


@cache
def csv_rows(name: str, n: int, step: int = 1) -> tuple[dict, ...]:
    """Every ``step``-th of the first ``n * step`` rows of a dataset CSV, as dicts.

    Without ../shared/datasets, the first ``n`` rows of the dataset's sample in examples/
    (real structures of the same dataset, other rows: that sample is already spread over the
    file); a dataset without a sample skips the test."""
    path = DATASETS / name
    if not path.exists() and name in EXAMPLE_SAMPLES:
        with open(EXAMPLE_SAMPLES[name], newline="") as fh:
            return tuple(itertools.islice(csv.DictReader(fh), n))
    with gzip.open(dataset(name), "rt", newline="") as fh:
        rows = itertools.islice(csv.DictReader(fh), 0, n * step, step)
        return tuple(rows)


def real_structures(name: str, n: int, step: int = 1) -> list:
    """pymatgen Structures parsed from a dataset CSV (pymatgen as the independent parser)."""
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [Structure.from_str(r["cif"], fmt="cif") for r in csv_rows(name, n, step)]


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return EXAMPLES
