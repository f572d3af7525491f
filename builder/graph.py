"""Structures -> graph records of the store contract (:mod:`schemas.record`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from fingerprint_pretrain.builder.neighbors import NeighbourBatch, NeighbourList, neighbour_batch
from fingerprint_pretrain.builder.structure import (
    MIN_DISTANCE,
    Rejected,
    StructureArrays,
    check_structure,
)
from fingerprint_pretrain.schemas.record import RecordError, shift_dtype

__all__ = ["graph_record", "graph_records"]


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
) -> list[tuple[dict, NeighbourList] | Rejected]:
    """:func:`graph_record` of each ``(record_id, structure, targets)``, the neighbour lists
    built, checked and cast for the whole batch at once (for lists of a few thousand edges,
    numpy's per-call cost, not the arithmetic, dominates).

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
    batch = neighbour_batch([(s.pos, s.cell, s.pbc) for _, s, _ in accepted], cutoff)
    fields = _BatchFields(batch)
    for b, (k, s, target_arr) in enumerate(accepted):
        nl = batch.list(b)
        try:
            results[k] = (_record(entries[k][0], s, target_arr, nl, cutoff, fields, b), nl)
        except Rejected as why:
            results[k] = why
    return results


class _BatchFields:
    """What the per-record checks and fields need, computed once for a batch: each
    structure's smallest distance, its atoms without neighbour, and the edge arrays cast to
    the store's dtypes (shifts to int8 when the whole batch fits, else None)."""

    def __init__(self, batch: NeighbourBatch):
        self.bounds = batch.bounds
        starts = np.asarray(batch.bounds[:-1])
        nonempty = starts < np.asarray(batch.bounds[1:])
        self.min_dist = np.full(len(batch), np.inf)
        if nonempty.any():
            self.min_dist[nonempty] = np.minimum.reduceat(batch.edge_dist, starts[nonempty])
        counts = np.bincount(batch.batch_centres(), minlength=int(batch.first_atom[-1]))
        isolated = np.flatnonzero(counts == 0)  # batch-wide atom numbers
        self.isolated: dict[int, int] = {}  # structure -> its first atom without neighbour
        for atom, k in zip(isolated, np.searchsorted(batch.first_atom, isolated, "right") - 1):
            self.isolated.setdefault(int(k), int(atom - batch.first_atom[k]))
        self.edge_index = batch.edge_index.astype(np.int32)
        self.edge_dist = batch.edge_dist.astype(np.float32)
        shift = batch.edge_shift
        fits = shift.size == 0 or (-128 <= shift.min() and shift.max() <= 127)
        self.edge_shift = shift.astype(np.int8) if fits else None


def _record(
    record_id: str,
    s: StructureArrays,
    target_arr: np.ndarray,
    nl: NeighbourList,
    cutoff: float,
    fields: _BatchFields,
    b: int,
) -> dict:
    """The record of checked structure ``b`` of a batch, from its list and the batch's
    fields; :class:`Rejected` for overlapping atoms, an atom without neighbour or shifts
    beyond int32."""
    if fields.min_dist[b] < MIN_DISTANCE:
        k = int(np.argmin(nl.edge_dist))
        j, i = nl.edge_index[:, k]
        raise Rejected(
            f"overlapping atoms: {i} and {j} are {nl.edge_dist[k]:.3f} Å apart (< {MIN_DISTANCE} Å)"
        )
    if b in fields.isolated:
        i = fields.isolated[b]
        raise Rejected(f"atom {i} (Z={int(s.z[i])}) has no neighbour within {cutoff} Å")
    e0, e1 = fields.bounds[b], fields.bounds[b + 1]
    if fields.edge_shift is not None:
        edge_shift = fields.edge_shift[e0:e1]
    else:
        try:
            edge_shift = nl.edge_shift.astype(shift_dtype(nl.edge_shift))
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
