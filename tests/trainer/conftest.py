"""Fixtures shared by the trainer tests: one tiny real store and tiny model settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.builder.helpers import MP_SAMPLE, build

# A model small enough that a few epochs on 40 structures take seconds (TrainConfig keys).
TINY = dict(
    hidden_channels=16,
    num_layers=1,
    num_rbf=8,
    num_heads=2,
    head_channels=16,
    num_workers=0,
    progress=False,
)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """The 40 MP structures of examples/mp_20_sample.csv: target ``band_gap`` (eV) and label
    set ``wacsfset1``. Shared by every test file that only reads it: a test that changes a
    store works on its own copy (:func:`copy_store`)."""
    out = tmp_path_factory.mktemp("tiny-store") / "mp.lmdb"
    build(
        out,
        MP_SAMPLE,
        targets=["band_gap"],
        target_units={"band_gap": "eV"},
        descriptors=["wacsfset1"],
    )
    return out


def copy_store(store: Path, folder: Path) -> Path:
    """A private copy of ``store`` in ``folder`` (same content, same hashes)."""
    here = folder / store.name
    shutil.copytree(store, here)
    return here
