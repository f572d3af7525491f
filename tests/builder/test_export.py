"""LMDB -> Zarr -> records is lossless; extxyz export reads back in ASE."""

from __future__ import annotations

import numpy as np
import pytest
from fingerprint_pretrain.builder.export import export_extxyz, export_zarr
from fingerprint_pretrain.builder.info import verify_store
from fingerprint_pretrain.schemas import open_store
from fingerprint_pretrain.schemas.record import GRAPH_FIELDS
from fingerprint_pretrain.schemas.store import compute_hashes

from tests.builder.helpers import MP_SAMPLE, MP_TARGETS, build


@pytest.fixture(scope="module")
def lmdb_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "mp.lmdb"
    build(out, MP_SAMPLE, targets=MP_TARGETS, allow_missing_targets=True)
    return out


def test_zarr_twin_is_lossless(lmdb_store, tmp_path):
    src = open_store(lmdb_store)
    out = export_zarr(src, tmp_path / "mp.zarr", progress=False)
    twin = open_store(out)
    assert twin.backend == "zarr" and len(twin) == len(src)
    assert twin.content_hash == src.content_hash
    for a, b in zip(src, twin):
        assert a["id"] == b["id"]
        for name in GRAPH_FIELDS:
            assert a[name].dtype == b[name].dtype, name
            assert a[name].shape == b[name].shape, name
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    np.testing.assert_array_equal(twin.num_atoms(), src.num_atoms())
    np.testing.assert_array_equal(twin.num_edges(), src.num_edges())
    # hashes recomputed from the Zarr arrays equal the LMDB manifest's
    assert compute_hashes(twin)["content_hash"] == src.content_hash
    ok, _ = verify_store(out, progress=False)
    assert ok
    with pytest.raises(FileExistsError):
        export_zarr(src, out, progress=False)


def test_extxyz_export_reads_back_in_ase(lmdb_store, tmp_path):
    import ase.io

    src = open_store(lmdb_store)
    path = export_extxyz(src, tmp_path / "mp.extxyz", progress=False)
    frames = ase.io.read(path, index=":")
    assert len(frames) == len(src)
    for rec, atoms in zip(src, frames):
        assert atoms.info["id"] == rec["id"]
        np.testing.assert_array_equal(atoms.numbers, rec["z"])
        np.testing.assert_allclose(atoms.positions, rec["pos"], atol=1e-12)
        np.testing.assert_allclose(atoms.cell.array, rec["cell"], atol=1e-12)
        assert atoms.pbc.tolist() == rec["pbc"].tolist()
        for name, value in zip(MP_TARGETS, rec["targets"]):
            assert atoms.info[name] == pytest.approx(value, rel=1e-15)


def test_zarr_twin_of_a_skewed_cell_keeps_int32_shifts_and_checksums_its_chunks(tmp_path):
    """Image offsets beyond int16 (a 1-atom cell with b = 40000·a) survive the export, and
    every array's chunks carry a CRC-32C."""
    import json

    import ase.io
    from ase import Atoms

    atoms = Atoms("Cu", positions=[[0.1, 0.2, 0.3]], cell=[[3, 0, 0], [120000, 3, 0], [0, 0, 3]])
    atoms.pbc = True
    atoms.info["material_id"] = "skewed"
    ase.io.write(tmp_path / "skewed.extxyz", atoms, format="extxyz")
    build(tmp_path / "skewed.lmdb", tmp_path / "skewed.extxyz", cutoff=8.0)
    src = open_store(tmp_path / "skewed.lmdb")
    twin = open_store(export_zarr(src, tmp_path / "skewed.zarr", progress=False))
    a, b = src[0], twin[0]
    assert a["edge_shift"].dtype == b["edge_shift"].dtype == np.int32
    np.testing.assert_array_equal(a["edge_shift"], b["edge_shift"])
    assert np.abs(b["edge_shift"]).max() == 80001
    for meta in (tmp_path / "skewed.zarr").rglob("zarr.json"):
        doc = json.loads(meta.read_text())
        if doc.get("node_type") == "array":
            assert doc["codecs"][-1]["name"] == "crc32c", meta
