"""Zarr store layout (the columnar twin of an LMDB store) and its reader.

Directory ``STORE.zarr/`` is a Zarr group plus ``manifest.json`` (same manifest as the LMDB
store, ``backend: "zarr"``, same content hash). Arrays (R records, A atoms, E edges in total):

=================  ===========  ============  ============================================
array              dtype        shape         content
=================  ===========  ============  ============================================
``atom_offsets``   int64        (R + 1,)      record r owns atoms [off[r], off[r+1])
``edge_offsets``   int64        (R + 1,)      record r owns edges [off[r], off[r+1])
``z``              uint8        (A,)          atomic numbers
``pos``            float64      (A, 3)        Å
``edge_index``     int32        (2, E)        per-record (local) atom indices, j then i
``edge_shift``     int16        (E, 3)        image offsets (records decode to int8 where the
                                              values fit, as in LMDB: lossless)
``edge_dist``      float32      (E,)          Å
``cell``           float64      (R, 3, 3)     Å
``pbc``            bool         (R, 3)
``targets``        float64      (R, T)
``id``             str          (R,)
``descriptors/<set>``  float32/16  (A, d)     per-atom labels
=================  ===========  ============  ============================================

Chunks are compressed with Zstandard (Zarr's default). The reader keeps decoded chunks in a
bounded LRU cache (``cache_bytes``, default 512 MiB per store object), so random access touches
each chunk once while it fits; LMDB remains the format for training.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from schemas.manifest import StoreError
from schemas.record import shift_dtype
from schemas.store import Store

__all__ = ["ZarrStore"]


class _ChunkCache:
    """Decoded chunks of Zarr arrays, least recently used dropped first, bounded in bytes."""

    def __init__(self, budget: int):
        self.budget = budget
        self.used = 0
        self.chunks: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def rows(self, name: str, array, start: int, stop: int, axis: int = 0) -> np.ndarray:
        """``array[start:stop]`` along ``axis`` (0 or 1), assembled from cached chunks."""
        if stop <= start:
            shape = list(array.shape)
            shape[axis] = 0
            return np.zeros(shape, dtype=array.dtype)
        step = array.chunks[axis]
        parts = []
        for c in range(start // step, (stop - 1) // step + 1):
            block = self.chunks.get((name, c))
            if block is None:
                lo, hi = c * step, min((c + 1) * step, array.shape[axis])
                block = array[lo:hi] if axis == 0 else array[:, lo:hi]
                block.flags.writeable = False  # records are views of it: keep it intact
                self.chunks[(name, c)] = block
                self.used += block.nbytes
                while self.used > self.budget and len(self.chunks) > 1:
                    _, old = self.chunks.popitem(last=False)
                    self.used -= old.nbytes
            else:
                self.chunks.move_to_end((name, c))
            lo = max(start - c * step, 0)
            hi = min(stop - c * step, step)
            parts.append(block[lo:hi] if axis == 0 else block[:, lo:hi])
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)


class ZarrStore(Store):
    """Read-only Zarr store with the same record interface as :class:`LmdbStore`."""

    backend = "zarr"

    def __init__(
        self,
        path,
        manifest: dict,
        descriptors: Iterable[str] | None = None,
        cache_bytes: int = 512 << 20,
    ):
        super().__init__(path, manifest, descriptors)
        self._group = None
        self._cache = _ChunkCache(cache_bytes)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_group"] = None
        state.pop("_arrays", None)
        state["_cache"] = _ChunkCache(self._cache.budget)
        return state

    def _open(self):
        if self._group is None:
            import zarr

            try:
                group = zarr.open_group(str(self.path), mode="r")
            except Exception as err:  # zarr raises several types for a damaged group
                raise StoreError(f"{self.path}: cannot open Zarr group: {err}") from None
            self._atom_off = group["atom_offsets"][:]
            self._edge_off = group["edge_offsets"][:]
            self._ids = group["id"][:]
            # Array handles resolved once: looking one up reads its metadata from disk.
            names = ("z", "pos", "cell", "pbc", "edge_index", "edge_shift", "edge_dist", "targets")
            self._arrays = {name: group[name] for name in names}
            for name in self.descriptor_names:
                self._arrays[f"descriptors/{name}"] = group["descriptors"][name]
            self._group = group
        return self._group

    def num_atoms(self) -> np.ndarray:
        self._open()
        return np.diff(self._atom_off)

    def num_edges(self) -> np.ndarray:
        self._open()
        return np.diff(self._edge_off)

    def get(self, index: int, descriptors: Sequence[str] | None = None) -> dict[str, Any]:
        i = self._check_index(index)
        self._open()
        a0, a1 = int(self._atom_off[i]), int(self._atom_off[i + 1])
        e0, e1 = int(self._edge_off[i]), int(self._edge_off[i + 1])

        def rows(name: str, start: int, stop: int, axis: int = 0) -> np.ndarray:
            return self._cache.rows(name, self._arrays[name], start, stop, axis)

        shift = rows("edge_shift", e0, e1)
        rec: dict[str, Any] = {
            "id": str(self._ids[i]),
            "z": rows("z", a0, a1),
            "pos": rows("pos", a0, a1),
            "cell": rows("cell", i, i + 1)[0],
            "pbc": rows("pbc", i, i + 1)[0],
            "edge_index": rows("edge_index", e0, e1, axis=1),
            "edge_shift": shift.astype(shift_dtype(shift)),
            "edge_dist": rows("edge_dist", e0, e1),
            "targets": rows("targets", i, i + 1)[0],
        }
        for name in self.descriptors if descriptors is None else descriptors:
            rec[name] = rows(f"descriptors/{name}", a0, a1)
        return rec
