"""The graph build's fast path (issue 21 goal 4): records gathered straight into the store's
dtypes in sub-batches (builder.graph.graph_records on builder.neighbors.sorted_edges), and
schemas.record.encode_graph_record (re-exported by builder.graph), checked against independent
references: the Python-sorted lists of tests/builder/test_neighbors.py, and schemas.record's
encode_record / record_digest / decode_record (the format's definition)."""

from __future__ import annotations

import numpy as np
import pytest
from fingerprint_pretrain.builder import graph, neighbors
from fingerprint_pretrain.builder.graph import encode_graph_record, graph_records
from fingerprint_pretrain.builder.structure import Rejected
from fingerprint_pretrain.schemas.record import (
    GRAPH_FIELDS,
    decode_record,
    encode_record,
    record_digest,
)

from tests.builder.test_graph import arrays, skewed_cubic
from tests.builder.test_neighbors import CUTOFF, python_sorted_list, tie_heavy_structures
from tests.conftest import real_structures


def _entries():
    """Real MP-20 and perov_5 structures, tie-heavy cells, an int16-shift cell and two
    rejections, spread over several sub-batches."""
    real = [
        arrays([site.specie.Z for site in s], s.cart_coords, s.lattice.matrix)
        for s in real_structures("mp_20_subset.csv.gz", 5, 331)
        + real_structures("perov_5.csv.gz", 2, 901)
    ]
    # (the slab of tie_heavy_structures() has an atom on another's periodic image: rejected)
    ties = [arrays([6] * len(p), p, c, pbc) for p, c, pbc in tie_heavy_structures()[:3]]
    structures = real[:3] + ties[:2] + [skewed_cubic()] + real[3:] + ties[2:]
    entries = [(f"s{k}", s, [float(k)]) for k, s in enumerate(structures)]
    overlap = arrays([8, 8], [[0, 0, 0], [0.3, 0, 0]], np.eye(3) * 5.0)
    entries.insert(2, ("overlap", overlap, [1.0]))
    entries.insert(9, ('quoted "id" é', real[0], [2.5]))
    return entries


def _check_against_python_sort(entries, results):
    for (name, s, targets), result in zip(entries, results):
        if name == "overlap":
            assert str(result) == "overlapping atoms: 0 and 1 are 0.300 Å apart (< 0.5 Å)"
            continue
        record, _ = result
        edge_index, edge_shift, edge_dist = python_sorted_list(s.pos, s.cell, s.pbc, CUTOFF)
        assert record["edge_index"].dtype == np.int32
        np.testing.assert_array_equal(record["edge_index"], edge_index)
        assert record["edge_shift"].dtype == (np.int16 if name == "s5" else np.int8)
        np.testing.assert_array_equal(record["edge_shift"], edge_shift)
        assert record["edge_dist"].dtype == np.float32
        np.testing.assert_array_equal(record["edge_dist"], edge_dist.astype(np.float32))
        assert record["targets"].tolist() == list(targets)


@pytest.mark.parametrize("sub_batch", [1, 3, 4, 64])
def test_sub_batches_give_the_python_sorted_records(monkeypatch, sub_batch):
    """Whatever the sub-batch size (a rejection and the int16 cell inside a sub-batch), each
    record holds the Python-sorted list in the store's dtypes; ``lists=False`` leaves out
    the int64 lists and changes nothing else."""
    monkeypatch.setattr(graph, "SUB_BATCH", sub_batch)
    entries = _entries()
    lean = graph_records(entries, CUTOFF, lists=False)
    _check_against_python_sort(entries, lean)
    assert all(r[1] is None for r in lean if not isinstance(r, Rejected))
    full = graph_records(entries, CUTOFF)
    for (_, s, _), a, b in zip(entries, lean, full):
        if isinstance(a, Rejected):
            assert str(a) == str(b)
            continue
        for field in GRAPH_FIELDS:
            np.testing.assert_array_equal(a[0][field], b[0][field])
        _, _, edge_dist = python_sorted_list(s.pos, s.cell, s.pbc, CUTOFF)
        assert b[1].edge_dist.dtype == np.float64
        np.testing.assert_array_equal(b[1].edge_dist, edge_dist)


def test_lexsort_fallback_gives_the_same_records(monkeypatch):
    """Keys too wide for one int64 (forced): each structure's exact lexsort, same records."""
    monkeypatch.setattr(neighbors, "_KEY_LIMIT", 1)
    entries = _entries()
    _check_against_python_sort(entries, graph_records(entries, CUTOFF, lists=False))


def test_encode_graph_record_is_byte_equal_to_the_schemas_functions():
    """Bytes equal to ``encode_record(id, graph fields)`` and digest equal to
    ``record_digest`` (ids with quotes and non-ASCII characters, int8 and int16 shifts,
    non-contiguous edge_index views), and the bytes decode to the record's arrays."""
    entries = _entries()
    records = [r[0] for r in graph_records(entries, CUTOFF, lists=False) if isinstance(r, tuple)]
    assert len(records) == len(entries) - 1
    # most are views into a sub-batch's (2, E) array
    assert sum(not r["edge_index"].flags.c_contiguous for r in records) >= len(records) // 2
    for record in records:
        blob, digest = encode_graph_record(record)
        assert blob == encode_record(record["id"], {k: record[k] for k in GRAPH_FIELDS})
        assert digest == record_digest(record)
        decoded = decode_record(blob)
        assert decoded["id"] == record["id"]
        for field in GRAPH_FIELDS:
            assert decoded[field].dtype == record[field].dtype
            np.testing.assert_array_equal(decoded[field], record[field])


def test_det3_matches_numpy():
    rng = np.random.default_rng(7)
    for cell in [*rng.normal(size=(50, 3, 3)), np.eye(3) * 1e-3, np.zeros((3, 3))]:
        assert neighbors._det3(cell) == pytest.approx(np.linalg.det(cell), rel=1e-12, abs=1e-15)
