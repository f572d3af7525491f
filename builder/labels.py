"""Descriptor label sets for one structure: computed, cast and encoded for the store.

Glue between the pure descriptor functions (:mod:`builder.descriptors`) and the store: picks
the neighbour list each set needs (the store's own when its cutoff covers the set's radius,
a wider one otherwise), casts to the storage dtype, measures what the cast lost, and encodes one
``FPR1`` blob per set. Used by both ``fp-build build --descriptor`` and ``fp-build add``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from fingerprint_pretrain.builder.neighbors import NeighbourList, neighbour_list
from fingerprint_pretrain.builder.stats import FeatureStats
from fingerprint_pretrain.schemas.record import descriptor_digest, edge_vectors, encode_record

__all__ = [
    "CastError",
    "LabelAccumulator",
    "LabelConfig",
    "compute_labels",
    "neighbour_list_from_record",
]


@dataclass(frozen=True)
class LabelConfig:
    """Which sets to compute and how to store them.

    Attributes:
        names: registry names (``eadset1`` ...).
        dtype: storage dtype, ``float32`` (default) or ``float16``.
        codec: (set name, codec) pairs, codec one of those of
            :func:`fingerprint_pretrain.schemas.record.encode_record`; unlisted sets are raw.
    """

    names: tuple[str, ...] = ()
    dtype: str = "float32"
    codec: tuple[tuple[str, str], ...] = ()

    def codec_of(self, name: str) -> str:
        return dict(self.codec).get(name, "raw")


@dataclass
class CastError:
    """What casting float64 labels to the storage dtype lost, per set.

    ``max_abs`` and ``max_rel`` (relative to max(|x|, tiny)) over finite values; ``overflow``
    counts finite values that became ±inf (float16 tops out at 65,504).
    """

    max_abs: float = 0.0
    max_rel: float = 0.0
    overflow: int = 0

    def merge(self, other: CastError) -> CastError:
        return CastError(
            max(self.max_abs, other.max_abs),
            max(self.max_rel, other.max_rel),
            self.overflow + other.overflow,
        )

    @classmethod
    def of(cls, exact: np.ndarray, stored: np.ndarray) -> CastError:
        back = stored.astype(np.float64)
        finite = np.isfinite(exact)
        overflow = int((finite & ~np.isfinite(back)).sum())
        ok = finite & np.isfinite(back)
        if not ok.any():
            return cls(0.0, 0.0, overflow)
        diff = np.abs(back[ok] - exact[ok])
        tiny = np.finfo(stored.dtype).tiny
        rel = diff / np.maximum(np.abs(exact[ok]), tiny)
        return cls(float(diff.max()), float(rel.max()), overflow)

    def to_dict(self) -> dict:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel, "overflow": self.overflow}

    def check(self, name: str, dtype: str) -> None:
        """Raise ValueError when the cast turned finite values into infinities."""
        if self.overflow:
            raise ValueError(
                f"{name}: {self.overflow} values exceed the {dtype} range "
                f"(±{float(np.finfo(dtype).max):,.0f}); store this set as float32"
            )


def compute_labels(
    names: Iterable[str],
    z: np.ndarray,
    pos: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    nl: NeighbourList | None,
) -> dict[str, np.ndarray]:
    """Each named set as a (N, d) float64 array.

    Args:
        nl: a neighbour list of the structure (e.g. the store's), or None; a wider one is
            computed once when some set needs a larger radius, and shared by all such sets.
    """
    names = list(names)
    if not names:
        return {}
    from fingerprint_pretrain.builder.descriptors.registry import get

    specs = [get(name) for name in names]
    radii = {s.name: s.radius_for(z) for s in specs}
    radius = max(radii.values())
    if nl is None or nl.cutoff < radius:
        # descriptors need no distance order: skip the sort (most of a wide list's cost)
        nl = neighbour_list(pos, cell, pbc, radius, sort=False)
    return {
        s.name: np.asarray(s.compute(z, pos, cell, pbc, nl.within(radii[s.name]))) for s in specs
    }


@dataclass
class LabelAccumulator:
    """Casts and encodes labels record by record; gathers stats and cast errors of a chunk."""

    config: LabelConfig
    stats: dict[str, FeatureStats] = field(default_factory=dict)
    errors: dict[str, CastError] = field(default_factory=dict)
    _blocks: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, record_id: str, values: dict[str, np.ndarray]) -> dict[str, tuple[bytes, bytes]]:
        """name -> (FPR1 blob, digest) of one record's sets."""
        out = {}
        for name, exact in values.items():
            with np.errstate(over="ignore"):  # overflow is measured and reported below
                stored = exact.astype(self.config.dtype)
            error = CastError.of(exact, stored)
            self.errors[name] = self.errors.get(name, CastError()).merge(error)
            self._blocks.setdefault(name, []).append(stored)
            blob = encode_record(record_id, {name: stored}, {name: self.config.codec_of(name)})
            out[name] = (blob, descriptor_digest(name, stored))
        return out

    def finish(self) -> tuple[dict[str, FeatureStats], dict[str, CastError]]:
        """Statistics of the stored values (what a trainer reads) and cast errors."""
        stats = {
            name: FeatureStats.of(np.concatenate(blocks).astype(np.float64))
            for name, blocks in self._blocks.items()
        }
        return stats, self.errors


def neighbour_list_from_record(record: dict, cutoff: float) -> NeighbourList:
    """The store's edges as a :class:`NeighbourList` with float64 distances recomputed from
    positions (the stored float32 distances are not precise enough for labels)."""
    edge_index = np.asarray(record["edge_index"], dtype=np.int64)
    shift = np.asarray(record["edge_shift"], dtype=np.int64)
    vec = edge_vectors(record["pos"], record["cell"], edge_index, shift)
    return NeighbourList(edge_index, shift, np.sqrt(np.einsum("ij,ij->i", vec, vec)), cutoff)
