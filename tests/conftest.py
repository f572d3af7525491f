"""Shared fixtures: paths to the real datasets and small real structures loaded from them."""

from __future__ import annotations

import csv
import gzip
import itertools
import sys
import warnings
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
DATASETS = REPO.parent / "shared" / "datasets"

csv.field_size_limit(sys.maxsize)


def dataset(name: str) -> Path:
    """Path of a file in ../shared/datasets (fails clearly when the folder is missing)."""
    path = DATASETS / name
    if not path.exists():
        pytest.fail(f"{path} missing: the tests need ../shared/datasets beside the repository")
    return path


@cache
def csv_rows(name: str, n: int, step: int = 1) -> tuple[dict, ...]:
    """Every ``step``-th of the first ``n * step`` rows of a dataset CSV, as dicts."""
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
