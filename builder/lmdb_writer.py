"""Writing LMDB stores: batched, crash-safe transactions with a growing map.

Every batch of records is written in one transaction together with the build's progress
(``b/progress``), so after a crash (``kill -9`` included) the store holds exactly the batches
whose progress it records, and a restart continues from there. ``map_size`` starts small and
doubles whenever a batch does not fit (the batch is then retried).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import lmdb

__all__ = ["LmdbWriter", "PROGRESS_KEY"]

PROGRESS_KEY = b"b/progress"
REJECTED_PREFIX = b"b/rejected/"


class LmdbWriter:
    """A writable LMDB environment with batch commits and automatic map growth.

    Args:
        path: environment directory (created if missing).
        map_size: initial map size, bytes; doubled on demand.
    """

    def __init__(self, path: str | os.PathLike, map_size: int = 1 << 28):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        data = self.path / "data.mdb"
        size = max(map_size, data.stat().st_size if data.exists() else 0)
        self.env = lmdb.open(
            str(self.path), subdir=True, map_size=size, max_dbs=0, readahead=False, meminit=False
        )

    def write(self, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Write ``(key, value)`` pairs in one transaction; ``value None`` deletes the key."""
        items = list(items)
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in items:
                        if value is None:
                            txn.delete(key)
                        else:
                            txn.put(key, value)
                return
            except lmdb.MapFullError:
                # The failed transaction was aborted by the context manager: grow and retry.
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def get(self, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(key)

    def read_json(self, key: bytes) -> dict | None:
        raw = self.get(key)
        return None if raw is None else json.loads(raw)

    def prefixed(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """All (key, value) pairs whose key starts with ``prefix``, in key order."""
        out = []
        with self.env.begin() as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    out.append((bytes(key), bytes(value)))
        return out

    def close(self) -> None:
        self.env.sync(True)
        self.env.close()
        # The lock file only coordinates writers; a finished store is read with lock=False.
        lock = self.path / "lock.mdb"
        if lock.exists():
            lock.unlink()
