"""LMDB store layout and its reader.

Directory ``STORE.lmdb/``: ``manifest.json``, ``data.mdb`` (one LMDB environment),
``rejected.csv``. Keys in ``data.mdb``:

- ``g/<index:010d>``: the graph record (``FPR1`` bytes, :mod:`schemas.record`);
- ``d/<set>/<index:010d>``: one descriptor set of one record (``FPR1`` with the single field
  ``<set>``, possibly zlib-compressed). A set is part of the store only once the manifest lists
  it, so an interrupted ``fp-build add`` never exposes partial labels;
- ``m/sizes``: ``FPR1`` with ``n_atoms`` (R,) int32 and ``n_edges`` (R,) int32.

Opening is lazy and per process (``readonly=True, lock=False``): the environment is opened on
first access in each process, and a forked DataLoader worker drops the handle it inherited and
opens its own (py-lmdb refuses a second open of the same path in one process, and LMDB handles
must not cross ``fork``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import lmdb
import numpy as np

from schemas.manifest import StoreError
from schemas.record import decode_record
from schemas.store import Store

__all__ = ["LmdbStore", "descriptor_key", "graph_key", "SIZES_KEY", "open_env_readonly"]

SIZES_KEY = b"m/sizes"


def graph_key(index: int) -> bytes:
    return b"g/%010d" % index


def descriptor_key(name: str, index: int) -> bytes:
    return b"d/%s/%010d" % (name.encode(), index)


# path -> (pid, env, txn): one read-only environment and one long-lived read transaction per
# process and store directory.
_OPEN: dict[str, tuple[int, lmdb.Environment, lmdb.Transaction]] = {}


def _forget_inherited_envs() -> None:
    """After fork: close the parent's handles in the child so the child can open its own."""
    for _pid, env, _txn in _OPEN.values():
        try:
            env.close()
        except lmdb.Error:
            pass
    _OPEN.clear()


os.register_at_fork(after_in_child=_forget_inherited_envs)


def open_env_readonly(path: str) -> lmdb.Transaction:
    """The calling process's read transaction on the store at ``path`` (opened on first use)."""
    entry = _OPEN.get(path)
    pid = os.getpid()
    if entry is not None and entry[0] == pid:
        return entry[2]
    if entry is not None:  # inherited through a fork that bypassed the at-fork hook
        _forget_inherited_envs()
    try:
        env = lmdb.open(
            path,
            subdir=True,
            readonly=True,
            lock=False,
            readahead=False,  # random access: let the OS page in only what is read
            meminit=False,
            max_readers=2048,
            max_dbs=0,
        )
    except lmdb.Error as err:
        raise StoreError(f"{path}: cannot open LMDB data: {err}") from None
    txn = env.begin(write=False, buffers=False)
    _OPEN[path] = (pid, env, txn)
    return txn


def close_env(path: str) -> None:
    """Close this process's handle on ``path`` (e.g. before the builder rewrites the store)."""
    entry = _OPEN.pop(path, None)
    if entry is not None:
        entry[1].close()


class LmdbStore(Store):
    """Read-only LMDB store. Safe to pass to forked or spawned DataLoader workers."""

    backend = "lmdb"

    def __init__(self, path, manifest: dict, descriptors: Iterable[str] | None = None):
        super().__init__(path, manifest, descriptors)
        if not (self.path / "data.mdb").is_file():
            raise StoreError(f"{self.path}: manifest present but data.mdb is missing")
        self._key = os.path.realpath(self.path)
        self._sizes: tuple[np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_sizes"] = None
        return state

    def _txn(self) -> lmdb.Transaction:
        return open_env_readonly(self._key)

    def _load(self, key: bytes, what: str) -> bytes:
        buf = self._txn().get(key)
        if buf is None:
            raise StoreError(f"{self.path}: {what} missing from data.mdb (store damaged?)")
        return buf

    def get(self, index: int, descriptors: Sequence[str] | None = None) -> dict[str, Any]:
        i = self._check_index(index)
        rec = decode_record(self._load(graph_key(i), f"record {i}"))
        for name in self.descriptors if descriptors is None else descriptors:
            buf = self._load(descriptor_key(name, i), f"descriptor {name!r} of record {i}")
            rec[name] = decode_record(buf)[name]
        return rec

    def _load_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sizes is None:
            sizes = decode_record(self._load(SIZES_KEY, "size table"))
            self._sizes = (sizes["n_atoms"].astype(np.int64), sizes["n_edges"].astype(np.int64))
        return self._sizes

    def num_atoms(self) -> np.ndarray:
        return self._load_sizes()[0]

    def num_edges(self) -> np.ndarray:
        return self._load_sizes()[1]
