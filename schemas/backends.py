"""Opening a store: :func:`open_store` reads the manifest and picks the backend's reader.

The dispatcher lives here, above both readers (:mod:`schemas.lmdb_store`, :mod:`schemas.zarr_store`)
and the interface they implement (:mod:`schemas.store`), so imports run one way:
``backends -> lmdb_store / zarr_store -> store``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from fingerprint_pretrain.schemas.lmdb_store import LmdbStore
from fingerprint_pretrain.schemas.manifest import StoreError, read_manifest
from fingerprint_pretrain.schemas.store import Store
from fingerprint_pretrain.schemas.zarr_store import ZarrStore

__all__ = ["open_store"]


def open_store(path: str | os.PathLike, descriptors: Iterable[str] | None = None) -> Store:
    """Open a finished store read-only (LMDB or Zarr, told apart by the manifest's backend).

    Args:
        path: store directory (``*.lmdb`` or ``*.zarr``).
        descriptors: descriptor sets to include in each record; ``None`` = all present here.

    Raises:
        StoreError: not a finished store, or a requested set that is not present (the message
            names it and how to get it); SchemaVersionError: unknown schema major version.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such store")
    manifest = read_manifest(path)
    backend = manifest.get("backend")
    if backend == "lmdb":
        return LmdbStore(path, manifest, descriptors)
    if backend == "zarr":
        return ZarrStore(path, manifest, descriptors)
    raise StoreError(f"{path}: unknown backend {backend!r} in manifest")
