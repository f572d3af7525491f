"""Structures -> graph records of the store contract (:mod:`schemas.record`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from fingerprint_pretrain.builder.neighbors import NeighbourList, SortedEdges, sorted_edges
from fingerprint_pretrain.builder.structure import (
    MIN_DISTANCE,
    Rejected,
    StructureArrays,
    check_structure,
)
from fingerprint_pretrain.schemas.record import (
    RecordError,
    encode_graph_record,
    shift_dtype,
)

__all__ = ["encode_graph_record", "graph_record", "graph_records"]

# Structures whose neighbour lists are sorted together. Batching pays numpy's per-call cost
# once per batch, but a batch's engine pairs (~100 bytes each, ~1,400 per MP-20 structure)
# should stay in a core's L2 cache: 4 structures (~0.6 MB) measured 10-25 % cheaper per
# structure than 32 on the shared 2-core AMD EPYC (bench/results/build.md, 2026-12-01).
SUB_BATCH = 4


def graph_record(
    record_id: str,
    structure: StructureArrays,
    targets: Sequence[float],
    cutoff: float,
    allow_missing_targets: bool = False,
) -> tuple[dict, NeighbourList]:
    """Check a structure, build its complete neighbour list and pack the record fields.

    Returns:
        ``(record, neighbour_list)``; the record holds every graph field of the contract.

    Raises:
        Rejected: with the reason (overlapping atoms, an atom without neighbour, missing
            target, or anything :func:`builder.structure.check_structure` rejects).
    """
    (result,) = graph_records([(record_id, structure, targets)], cutoff, allow_missing_targets)
    if isinstance(result, Rejected):
        raise result
    return result


def _checked(
    structure: StructureArrays, targets: Sequence[float], allow_missing_targets: bool
) -> tuple[StructureArrays, np.ndarray]:
    """The structure's arrays (``z`` as uint8) and its (T,) float64 targets, or
    :class:`Rejected` (raised) for what needs no neighbour list to refuse."""
    s = check_structure(structure)
    target_arr = np.asarray(targets, dtype=np.float64).reshape(-1)
    if not allow_missing_targets and np.isnan(target_arr).any():
        raise Rejected(f"missing target ({int(np.isnan(target_arr).sum())} of {len(target_arr)})")
    return s, target_arr


def graph_records(
    entries: Sequence[tuple[str, StructureArrays, Sequence[float]]],
    cutoff: float,
    allow_missing_targets: bool = False,
    lists: bool = True,
) -> list[tuple[dict, NeighbourList | None] | Rejected]:
    """:func:`graph_record` of each ``(record_id, structure, targets)``, the neighbour lists
    built, checked and cast for :data:`SUB_BATCH` structures at once (for lists of a few
    thousand edges, numpy's per-call cost, not the arithmetic, dominates).

    Args:
        lists: also return each record's :class:`NeighbourList` (int64 / float64, for
            labels); ``False``: ``None`` in its place, and no such arrays are made.

    Returns:
        per entry, in order, ``(record, neighbour_list)`` or the :class:`Rejected` saying
        why it is refused (the same reason, found by the same checks in the same order, as
        one at a time). The records' edge arrays are views into batch-wide arrays.
    """
    results: list = [None] * len(entries)
    accepted = []  # (position, checked arrays, targets)
    for k, (_, structure, targets) in enumerate(entries):
        try:
            accepted.append((k, *_checked(structure, targets, allow_missing_targets)))
        except Rejected as why:
            results[k] = why
    for start in range(0, len(accepted), SUB_BATCH):
        group = accepted[start : start + SUB_BATCH]
        edges = sorted_edges([(s.pos, s.cell, s.pbc) for _, s, _ in group], cutoff)
        fields = _BatchFields(edges)
        for b, (k, s, target_arr) in enumerate(group):
            try:
                record = _record(entries[k][0], s, target_arr, edges, fields, b)
            except Rejected as why:
                results[k] = why
                continue
            results[k] = (record, edges.list(b) if lists else None)
    return results


class _BatchFields:
    """What the per-record checks and fields need, computed once for a batch: each
    structure's smallest distance, its atoms without neighbour, and the edge arrays gathered
    in the store's dtypes (shifts as int8 when the whole batch fits, else None)."""

    def __init__(self, edges: SortedEdges):
        order = edges.order
        self.bounds = edges.bounds
        dist = edges.dist[order]
        starts = np.asarray(edges.bounds[:-1])
        nonempty = starts < np.asarray(edges.bounds[1:])
        self.min_dist = np.full(len(edges), np.inf)
        if nonempty.any():
            self.min_dist[nonempty] = np.minimum.reduceat(dist, starts[nonempty])
        isolated = np.flatnonzero(edges.atom_edges == 0)  # batch-wide atom numbers
        self.isolated: dict[int, int] = {}  # structure -> its first atom without neighbour
        for atom, k in zip(isolated, np.searchsorted(edges.first_atom, isolated, "right") - 1):
            self.isolated.setdefault(int(k), int(atom - edges.first_atom[k]))
        self.edge_index = np.empty((2, len(order)), np.int32)
        np.take(edges.neighbour, order, out=self.edge_index[0], mode="clip")
        np.take(edges.centre, order, out=self.edge_index[1], mode="clip")
        self.edge_dist = dist.astype(np.float32)
        lo, hi = edges.shift_range
        fits = -128 <= lo and hi <= 127  # over every engine pair: the kept ones fit too
        self.edge_shift = np.take(edges.image.astype(np.int8), order, axis=0) if fits else None


def _record(
    record_id: str,
    s: StructureArrays,
    target_arr: np.ndarray,
    edges: SortedEdges,
    fields: _BatchFields,
    b: int,
) -> dict:
    """The record of checked structure ``b`` of a batch, from the batch's fields;
    :class:`Rejected` for overlapping atoms, an atom without neighbour or shifts beyond
    int32."""
    if fields.min_dist[b] < MIN_DISTANCE:
        nl = edges.list(b)
        k = int(np.argmin(nl.edge_dist))
        j, i = nl.edge_index[:, k]
        raise Rejected(
            f"overlapping atoms: {i} and {j} are {nl.edge_dist[k]:.3f} Å apart (< {MIN_DISTANCE} Å)"
        )
    if b in fields.isolated:
        i = fields.isolated[b]
        raise Rejected(f"atom {i} (Z={int(s.z[i])}) has no neighbour within {edges.cutoff} Å")
    e0, e1 = fields.bounds[b], fields.bounds[b + 1]
    if fields.edge_shift is not None:
        edge_shift = fields.edge_shift[e0:e1]
    else:
        shift = edges.list(b).edge_shift
        try:
            edge_shift = shift.astype(shift_dtype(shift))
        except RecordError as why:  # beyond int32: never stored wrapped
            raise Rejected(f"cell too skewed to store: {why}") from None
    return {
        "id": str(record_id),
        "z": s.z,
        "pos": s.pos,
        "cell": s.cell,
        "pbc": s.pbc,
        "edge_index": fields.edge_index[:, e0:e1],
        "edge_shift": edge_shift,
        "edge_dist": fields.edge_dist[e0:e1],
        "targets": target_arr,
    }
