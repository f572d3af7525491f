"""Graphs stay right for strongly skewed cells: a 1-atom cell whose second vector is
b = 40000·a + (0, a, 0), the same lattice as simple cubic, needs image offsets of ~80,000
cells, beyond int16. The stored edges must be exact (never wrapped), and labels computed later
by ``add`` from the stored edges must equal those ``build`` computed."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list
from fingerprint_pretrain.builder.add import add_descriptors
from fingerprint_pretrain.schemas import open_store

from tests.builder.helpers import build

A = 3.0  # Å, simple cubic lattice constant
CUTOFF = 8.0
POSITION = [0.1, 0.2, 0.3]
SKEWED = np.array([[A, 0, 0], [40000 * A, A, 0], [0, 0, A]])
CUBIC = np.eye(3) * A


def crystal(cell: np.ndarray, name: str) -> Atoms:
    atoms = Atoms("Cu", positions=[POSITION], cell=cell, pbc=True)
    atoms.info["material_id"] = name
    atoms.info["gap"] = 1.0
    return atoms


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(store built with wacsfset1, store built without it and given it by ``add``), both of
    the skewed cell and of the same crystal in its cubic cell."""
    work = tmp_path_factory.mktemp("skewed")
    frames = work / "cells.extxyz"
    ase.io.write(frames, [crystal(SKEWED, "skewed"), crystal(CUBIC, "cubic")], format="extxyz")
    built = work / "built.lmdb"
    build(built, frames, targets=["gap"], descriptors=["wacsfset1"], cutoff=CUTOFF)
    added = work / "added.lmdb"
    build(added, frames, targets=["gap"], cutoff=CUTOFF)
    add_descriptors(added, ["wacsfset1"], jobs=1, progress=False)
    return open_store(built), open_store(added)


def sorted_rows(vectors: np.ndarray) -> np.ndarray:
    rounded = np.round(vectors, 6)
    return rounded[np.lexsort(rounded.T[::-1])]


def test_stored_edge_vectors_equal_ase_on_the_same_lattice(stores):
    """ASE's neighbour list (on the cubic cell of the same lattice: on the skewed cell ASE
    needs minutes) is the reference for the vectors the store reproduces."""
    built, _ = stores
    rec = next(r for r in built if r["id"] == "skewed")
    assert rec["edge_shift"].dtype == np.int32  # int16 cannot hold the shifts
    assert np.abs(rec["edge_shift"]).max() > np.iinfo(np.int16).max
    j, i = rec["edge_index"].astype(np.int64)
    vectors = rec["pos"][j] + rec["edge_shift"].astype(np.int64) @ rec["cell"] - rec["pos"][i]
    _, _, reference = ase_neighbor_list("ijD", crystal(CUBIC, "x"), CUTOFF, self_interaction=False)
    assert len(vectors) == len(reference) == 80
    np.testing.assert_allclose(sorted_rows(vectors), sorted_rows(reference), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), rec["edge_dist"], rtol=1e-6)


def test_add_computes_the_labels_build_computed(stores):
    built, added = stores
    for a, b in zip(built, added):
        assert a["id"] == b["id"]
        np.testing.assert_array_equal(a["wacsfset1"], b["wacsfset1"])
    # and the skewed cell's labels are the cubic crystal's (same crystal, another cell)
    by_id = {r["id"]: r["wacsfset1"] for r in added}
    np.testing.assert_allclose(by_id["skewed"], by_id["cubic"], rtol=1e-5, atol=1e-6)
