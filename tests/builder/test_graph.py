"""Graph records built for a batch at once (builder.graph.graph_records): each structure gets
the record, or the rejection reason, it gets alone; checked against hand-written reasons and
the Python-sorted neighbour lists of tests/builder/test_neighbors.py."""

from __future__ import annotations

import numpy as np
from fingerprint_pretrain.builder.graph import graph_records
from fingerprint_pretrain.builder.structure import Rejected, StructureArrays

from tests.builder.test_neighbors import CUTOFF, python_sorted_list
from tests.conftest import real_structures


def arrays(z, pos, cell, pbc=(True, True, True)) -> StructureArrays:
    return StructureArrays(
        np.asarray(z, np.int64),
        np.asarray(pos, float).reshape(-1, 3),
        np.asarray(cell, float),
        np.asarray(pbc, bool),
    )


def skewed_cubic() -> StructureArrays:
    """One atom of a 3 Å simple cubic lattice, given by a cell with a vector 200 cells long:
    its shifts reach ~400 cells, so the record needs int16 shifts."""
    change = np.eye(3, dtype=np.int64)
    change[0, 1] = 200
    return arrays([6], [[0.0, 0.0, 0.0]], change @ (np.eye(3) * 3.0))


def test_batch_gives_each_structure_its_own_record_or_reason():
    good = [
        arrays([site.specie.Z for site in s], s.cart_coords, s.lattice.matrix)
        for s in real_structures("mp_20_subset.csv.gz", 2, 401)
    ]
    entries = [
        ("good-0", good[0], [1.0]),
        ("overlap", arrays([8, 8], [[0, 0, 0], [0.3, 0, 0]], np.eye(3) * 5.0), [1.0]),
        ("skewed", skewed_cubic(), [2.0]),
        (
            "isolated",
            arrays([6, 6], [[0, 0, 0], [10.0, 0, 0]], np.eye(3) * 30, [False] * 3),
            [1.0],
        ),
        ("missing", good[1], [float("nan")]),
        ("empty", arrays([], np.zeros((0, 3)), np.eye(3) * 4.0), [1.0]),
        ("good-1", good[1], [3.0]),
    ]
    results = graph_records(entries, CUTOFF)
    reasons = {name: str(r) for (name, _, _), r in zip(entries, results) if isinstance(r, Rejected)}
    assert reasons == {
        "overlap": "overlapping atoms: 0 and 1 are 0.300 Å apart (< 0.5 Å)",
        "isolated": "atom 0 (Z=6) has no neighbour within 8.0 Å",
        "missing": "missing target (1 of 1)",
        "empty": "empty structure (no atoms)",
    }
    kept = {name: r for (name, _, _), r in zip(entries, results) if not isinstance(r, Rejected)}
    assert list(kept) == ["good-0", "skewed", "good-1"]
    for name, (record, nl) in kept.items():
        s = dict((e[0], e[1]) for e in entries)[name]
        edge_index, edge_shift, edge_dist = python_sorted_list(s.pos, s.cell, s.pbc, CUTOFF)
        assert record["id"] == name and record["z"].dtype == np.uint8
        assert record["edge_index"].dtype == np.int32
        np.testing.assert_array_equal(record["edge_index"], edge_index)
        # the narrowest type per record, even when another record of the batch needs more
        assert record["edge_shift"].dtype == (np.int16 if name == "skewed" else np.int8)
        np.testing.assert_array_equal(record["edge_shift"], edge_shift)
        assert record["edge_dist"].dtype == np.float32
        np.testing.assert_array_equal(record["edge_dist"], edge_dist.astype(np.float32))
        np.testing.assert_array_equal(nl.edge_dist, edge_dist)
    assert kept["good-1"][0]["targets"].tolist() == [3.0]
