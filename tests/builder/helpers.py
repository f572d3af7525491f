"""Small helpers shared by the builder tests."""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

from fingerprint_pretrain.builder.build import BuildOptions, build_store

from tests.conftest import EXAMPLES

csv.field_size_limit(sys.maxsize)

MP_SAMPLE = EXAMPLES / "mp_20_sample.csv"
PEROV_SAMPLE = EXAMPLES / "perov_5_sample.csv"
MP_TARGETS = ["formation_energy_per_atom", "band_gap"]


def build(out: Path, inputs, **options) -> dict:
    """Build a store quietly with one worker unless told otherwise; returns the manifest."""
    options.setdefault("jobs", 1)
    options.setdefault("progress", False)
    inputs = [str(p) for p in (inputs if isinstance(inputs, list) else [inputs])]
    return build_store(BuildOptions(inputs=inputs, out=str(out), **options))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def parse_cif(text: str):
    """Independent parse with pymatgen (the reference the store is compared with)."""
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(text, fmt="cif")
