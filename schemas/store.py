"""The read-only store interface (:class:`Store`) that the LMDB and Zarr readers implement.

Stores are opened with :func:`schemas.backends.open_store` (re-exported as
``fingerprint_pretrain.schemas.open_store``), which picks the backend; this module imports
neither backend, so the dependency runs one way (backends -> store).

>>> store = open_store("perovskites.lmdb")          # doctest: +SKIP
>>> len(store), store.target_names, store.descriptor_names
>>> rec = store[0]        # {"id", "z", "pos", "cell", "pbc", "edge_index", ..., "eadset1"}

Records are dicts of read-only NumPy arrays (see :mod:`schemas.record` for fields, dtypes and
shapes). Iteration yields records in store order.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fingerprint_pretrain.schemas.manifest import StoreError, combine_content_hash
from fingerprint_pretrain.schemas.record import descriptor_digest, record_digest

__all__ = ["ORIGIN_NAME", "Store", "compute_hashes"]

#: written by ``fp-build fetch URL`` beside the manifest: ``{"url": ..., "parts": {...}}``.
ORIGIN_NAME = "origin.json"


class Store:
    """Common interface of LMDB and Zarr stores (read-only).

    Attributes:
        path: the store directory.
        manifest: the parsed ``manifest.json``.
        descriptors: descriptor sets included in ``store[i]`` (default: all present here).
    """

    backend = "?"

    def __init__(self, path: str | os.PathLike, manifest: dict, descriptors: Iterable[str] | None):
        self.path = Path(path)
        self.manifest = manifest
        present = self._present_sets()
        if descriptors is None:
            self.descriptors = present
        else:
            self.descriptors = list(descriptors)
            self._check_readable(self.descriptors)
        self._len = int(manifest["counts"]["records"])

    def _present_sets(self) -> list[str]:
        """The label sets readable here (a store of parts may lack some of its sets)."""
        return list(self.manifest.get("descriptors", {}))

    def _check_readable(self, names: Sequence[str]) -> None:
        """Raise :class:`StoreError` unless every set of ``names`` is present here: a set the
        store lacks names ``fp-build add``, one only at its origin names how to get it."""
        listed = self.available_descriptors
        missing = [name for name in names if name not in listed]
        if missing:
            present = self.descriptor_names
            raise StoreError(
                f"{self.path}: descriptor set(s) {missing} not in store "
                f"(present: {present or 'none'}); add them with "
                f"`fp-build add {self.path} --descriptor NAME`"
            )
        present = set(self.descriptor_names)
        for name in names:
            if name not in present:
                raise StoreError(
                    f"{self.path}: descriptor set {name!r} is not present here (its part "
                    f"labels-{name}.mdb is absent); get it with {self._how_to_get(name)}"
                )

    def _how_to_get(self, name: str) -> str:
        """The command that brings an absent set: fetch from the store's origin, else add."""
        try:
            url = json.loads((self.path / ORIGIN_NAME).read_text()).get("url")
        except (OSError, ValueError, AttributeError):
            url = None
        if isinstance(url, str) and url:
            return f"`fp-build fetch {url} --labels {name}`"
        return f"`fp-build add {self.path} --descriptor {name}`"

    # -- metadata ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._len

    @property
    def target_names(self) -> list[str]:
        """Names of the entries of each record's ``targets`` array, in order."""
        return [t["name"] for t in self.manifest.get("targets", [])]

    @property
    def descriptor_names(self) -> list[str]:
        """The descriptor sets present here (readable)."""
        return self._present_sets()

    @property
    def available_descriptors(self) -> list[str]:
        """Every descriptor set the store has, present here or only at its origin."""
        return list(self.manifest.get("descriptors", {}))

    @property
    def absent_descriptors(self) -> list[str]:
        """The sets listed in the manifest whose parts are not here."""
        present = set(self.descriptor_names)
        return [name for name in self.available_descriptors if name not in present]

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    def num_atoms(self) -> np.ndarray:
        """(R,) int64 atoms per record (for size-aware batching), without reading records."""
        raise NotImplementedError

    def num_edges(self) -> np.ndarray:
        """(R,) int64 edges per record."""
        raise NotImplementedError

    # -- records ----------------------------------------------------------------------------
    def _check_index(self, index: int) -> int:
        i = int(index)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"record {index} out of range for store of {self._len}")
        return i

    def get(self, index: int, descriptors: Sequence[str] | None = None) -> dict[str, Any]:
        """Record ``index`` with the given descriptor sets (default: ``self.descriptors``)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get(index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self._len):
            yield self.get(i)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, records={self._len}, "
            f"targets={self.target_names}, descriptors={self.descriptor_names})"
        )


def compute_hashes(
    store: Store,
    progress: bool = False,
    check: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Recompute the store's hashes from its records (what ``fp-build verify`` compares).

    Args:
        store: an open store.
        progress: show a progress bar.
        check: called with ``(index, record)`` for every record (all descriptor sets
            included) before it is hashed, e.g. to check it against the contract.

    Returns:
        ``{"graphs_hash", "descriptors": {name: hash}, "content_hash"}``: the descriptor
        sets present here; the content hash counts an absent set by its manifest hash.
    """
    graph_h = hashlib.sha256()
    names = store.descriptor_names
    desc_h = {name: hashlib.sha256() for name in names}
    indices: Iterable[int] = range(len(store))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"verify {store.path.name}", unit="rec", smoothing=0.05)
    for i in indices:
        rec = store.get(i, descriptors=names)
        if check is not None:
            check(i, rec)
        graph_h.update(record_digest(rec))
        for name in names:
            desc_h[name].update(descriptor_digest(name, rec[name]))
    graphs_hash = "sha256:" + graph_h.hexdigest()
    descriptors = {name: "sha256:" + h.hexdigest() for name, h in desc_h.items()}
    absent = {
        name: store.manifest["descriptors"][name]["hash"] for name in store.absent_descriptors
    }
    return {
        "graphs_hash": graphs_hash,
        "descriptors": descriptors,
        "content_hash": combine_content_hash(graphs_hash, {**absent, **descriptors}),
    }
