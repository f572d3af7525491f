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
``edge_shift``     int32        (E, 3)        image offsets (records decode to the narrowest
                                              of int8/16/32 that holds them, as in LMDB:
                                              lossless); twins written before int32 shifts
                                              existed have int16 here
``edge_dist``      float32      (E,)          Å
``cell``           float64      (R, 3, 3)     Å
``pbc``            bool         (R, 3)
``targets``        float64      (R, T)
``id``             str          (R,)
``descriptors/<set>``  float32/16  (A, d)     per-atom labels
=================  ===========  ============  ============================================

Chunks are compressed with Zstandard (Zarr's default) and carry a CRC-32C (Zarr's ``crc32c``
codec; Zarr checks it on every chunk it decodes; twins written before it existed have none and
are read without the check). The reader keeps decoded chunks in a bounded LRU cache
(``cache_bytes``, default 512 MiB per store object), so random access touches each chunk once
while it fits; LMDB remains the format for training.

A Zarr store is untrusted input: before Zarr opens anything, every array's metadata is checked
from its JSON (:func:`schemas.zarr_meta.check_zarr_metadata`: plain numeric types, allowed
codecs only, no filters, whatever Zarr version is installed), each array's dtype and shape
against the manifest, and the offset arrays for what a lookup relies on (start at 0,
non-decreasing, end at the atom and edge counts), so a tampered store is refused with
:class:`~schemas.manifest.StoreError` instead of running code, hanging or over-allocating;
errors Zarr raises on damaged chunks are reported the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from fingerprint_pretrain.schemas.manifest import StoreError
from fingerprint_pretrain.schemas.record import shift_dtype
from fingerprint_pretrain.schemas.store import Store
from fingerprint_pretrain.schemas.zarr_meta import ArrayMeta, check_zarr_metadata

__all__ = ["ZarrStore"]

_GRAPH_ARRAYS = ("z", "pos", "cell", "pbc", "edge_index", "edge_shift", "edge_dist", "targets")


def _layout(manifest: dict) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Array path -> (allowed dtypes, shape) the manifest implies."""
    counts = manifest["counts"]
    n_rec, n_atoms, n_edges = (int(counts[k]) for k in ("records", "atoms", "edges"))
    n_targets = len(manifest.get("targets", []))
    out = {
        "atom_offsets": (("int64",), (n_rec + 1,)),
        "edge_offsets": (("int64",), (n_rec + 1,)),
        "z": (("uint8",), (n_atoms,)),
        "pos": (("float64",), (n_atoms, 3)),
        "edge_index": (("int32",), (2, n_edges)),
        "edge_shift": (("int16", "int32"), (n_edges, 3)),
        "edge_dist": (("float32",), (n_edges,)),
        "cell": (("float64",), (n_rec, 3, 3)),
        "pbc": (("bool",), (n_rec, 3)),
        "targets": (("float64",), (n_rec, n_targets)),
        "id": (("string", "str"), (n_rec,)),
    }
    for name, entry in manifest.get("descriptors", {}).items():
        out[f"descriptors/{name}"] = ((str(entry["dtype"]),), (n_atoms, int(entry["dim"])))
    return out


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
        #: arrays whose chunks carry no checksum (twins written before checksums), once opened
        self.unchecked_arrays: list[str] = []

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_group"] = None
        state.pop("_arrays", None)
        state["_cache"] = _ChunkCache(self._cache.budget)
        return state

    def _check_arrays(self) -> dict[str, ArrayMeta]:
        """Every array's metadata against the contract and the manifest (before Zarr runs)."""
        found = check_zarr_metadata(self.path)
        try:
            expected = _layout(self.manifest)
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(
                f"{self.path}: manifest lacks what the Zarr layout needs ({err})"
            ) from None
        for name, (dtypes, shape) in expected.items():
            meta = found.get(name)
            if meta is None:
                raise StoreError(f"{self.path}: array {name!r} is missing")
            dtype = "str" if meta["dtype"].startswith("str") else meta["dtype"]
            if dtype not in dtypes or meta["shape"] != shape:
                raise StoreError(
                    f"{self.path}: array {name!r} is {meta['dtype']} {list(meta['shape'])}, the "
                    f"manifest implies {' or '.join(dtypes)} {list(shape)}"
                )
        return found

    def _read_offsets(self, group, name: str, total: int) -> np.ndarray:
        off = self._read(group, name)
        if off[0] != 0 or off[-1] != total or (np.diff(off) < 0).any():
            raise StoreError(
                f"{self.path}: array {name!r} is damaged (offsets must rise from 0 to {total})"
            )
        return off

    def _read(self, group, name: str) -> np.ndarray:
        try:
            return group[name][:]
        except Exception as err:  # zarr and its codecs raise many types for damaged chunks
            raise StoreError(f"{self.path}: array {name!r} is damaged ({err})") from None

    def _open(self):
        if self._group is None:
            meta = self._check_arrays()
            self.unchecked_arrays = sorted(n for n in meta if not meta[n]["checksum"])
            import zarr

            try:
                group = zarr.open_group(str(self.path), mode="r", use_consolidated=False)
                # Array handles resolved once: looking one up reads its metadata from disk.
                self._arrays = {name: group[name] for name in _GRAPH_ARRAYS}
                for name in self.descriptor_names:
                    self._arrays[f"descriptors/{name}"] = group["descriptors"][name]
            except Exception as err:  # zarr raises several types for a damaged group
                raise StoreError(f"{self.path}: cannot open Zarr group: {err}") from None
            counts = self.manifest["counts"]
            self._atom_off = self._read_offsets(group, "atom_offsets", int(counts["atoms"]))
            self._edge_off = self._read_offsets(group, "edge_offsets", int(counts["edges"]))
            self._ids = self._read(group, "id")
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
            try:
                return self._cache.rows(name, self._arrays[name], start, stop, axis)
            except Exception as err:  # zarr and its codecs raise many types for damaged chunks
                raise StoreError(
                    f"{self.path}: record {i}: array {name!r} is damaged ({err})"
                ) from None

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
