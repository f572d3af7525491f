"""One structure -> one graph record of the store contract (:mod:`schemas.record`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from fingerprint_pretrain.builder.neighbors import NeighbourList, neighbour_list
from fingerprint_pretrain.builder.structure import (
    MIN_DISTANCE,
    Rejected,
    StructureArrays,
    check_structure,
)
from fingerprint_pretrain.schemas.record import RecordError, shift_dtype

__all__ = ["graph_record"]


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
    s = check_structure(structure)
    target_arr = np.asarray(targets, dtype=np.float64).reshape(-1)
    if not allow_missing_targets and np.isnan(target_arr).any():
        raise Rejected(f"missing target ({int(np.isnan(target_arr).sum())} of {len(target_arr)})")
    nl = neighbour_list(s.pos, s.cell, s.pbc, cutoff)
    if nl.num_edges and nl.edge_dist.min() < MIN_DISTANCE:
        k = int(np.argmin(nl.edge_dist))
        j, i = nl.edge_index[:, k]
        raise Rejected(
            f"overlapping atoms: {i} and {j} are {nl.edge_dist[k]:.3f} Å apart (< {MIN_DISTANCE} Å)"
        )
    counts = np.bincount(nl.edge_index[1], minlength=len(s.z))
    if (counts == 0).any():
        i = int(np.flatnonzero(counts == 0)[0])
        raise Rejected(f"atom {i} (Z={int(s.z[i])}) has no neighbour within {cutoff} Å")
    try:
        shift_type = shift_dtype(nl.edge_shift)
    except RecordError as why:  # beyond int32: never stored wrapped
        raise Rejected(f"cell too skewed to store: {why}") from None
    record = {
        "id": str(record_id),
        "z": s.z,
        "pos": s.pos,
        "cell": s.cell,
        "pbc": s.pbc,
        "edge_index": nl.edge_index.astype(np.int32),
        "edge_shift": nl.edge_shift.astype(shift_type),
        "edge_dist": nl.edge_dist.astype(np.float32),
        "targets": target_arr,
    }
    return record, nl
