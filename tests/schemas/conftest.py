"""Tiny stores for the damage and fuzz tests: six real MP structures, a 4 Å cutoff and one
compressed label set, so an LMDB store is ~80 KB (every page of it gets damaged often) and a
read of all records takes milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.builder.helpers import MP_SAMPLE, build, read_csv, write_csv


@pytest.fixture(scope="session")
def tiny_lmdb(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("tiny")
    rows = read_csv(MP_SAMPLE)[:6]
    sample = write_csv(work / "six.csv", list(rows[0]), [list(r.values()) for r in rows])
    out = work / "tiny.lmdb"
    build(
        out,
        sample,
        targets=["band_gap"],
        cutoff=4.0,
        descriptors=["gmpset1"],
        descriptor_codec={"gmpset1": "shuffle-zlib"},
    )
    return out


@pytest.fixture(scope="session")
def tiny_zarr(tiny_lmdb, tmp_path_factory) -> Path:
    from fingerprint_pretrain.builder.export import export_zarr
    from fingerprint_pretrain.schemas import open_store

    return export_zarr(
        open_store(tiny_lmdb), tmp_path_factory.mktemp("tiny-zarr") / "tiny.zarr", progress=False
    )
