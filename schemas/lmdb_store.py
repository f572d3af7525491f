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

Damaged files give :class:`~schemas.manifest.StoreError` (or
:class:`~schemas.record.RecordError` for a damaged record), never a crash: before liblmdb maps
``data.mdb``, :class:`schemas.lmdb_file.LmdbTree` checks its meta and branch pages (a
truncated file would otherwise kill the process with ``SIGBUS``), and before each key is
looked up, the leaf page it lives in (once per process and page); liblmdb's own errors name
the store, and every record's CRC-32 is checked when it is decoded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import lmdb
import numpy as np

from schemas.lmdb_file import LmdbTree
from schemas.manifest import StoreError
from schemas.record import RecordError, decode_record, has_checksum
from schemas.store import Store

__all__ = ["LmdbStore", "descriptor_key", "graph_key", "SIZES_KEY", "open_env_readonly"]

SIZES_KEY = b"m/sizes"


def graph_key(index: int) -> bytes:
    return b"g/%010d" % index


def descriptor_key(name: str, index: int) -> bytes:
    return b"d/%s/%010d" % (name.encode(), index)


@dataclass
class _Handle:
    """One process's read-only view of one store's ``data.mdb``.

    Attributes:
        pid: the process that opened it.
        tree: the checked structure of the snapshot ``txn`` reads.
        env, txn: the environment and its long-lived read transaction.
    """

    pid: int
    tree: LmdbTree
    env: lmdb.Environment
    txn: lmdb.Transaction

    def get(self, key: bytes, where: str) -> bytes | None:
        """The value under ``key`` (None if absent), its leaf page checked first."""
        self.tree.check_key(key, where)
        try:
            return self.txn.get(key)
        except lmdb.Error as err:
            raise StoreError(f"{where}: data.mdb is damaged ({err})") from None

    def close(self) -> None:
        self.tree.close()
        self.env.close()


# path -> this process's handle: one read-only environment and one long-lived read transaction
# per process and store directory.
_OPEN: dict[str, _Handle] = {}


def _forget_inherited_envs() -> None:
    """After fork: close the parent's handles in the child so the child can open its own."""
    for handle in _OPEN.values():
        try:
            handle.close()
        except lmdb.Error:
            pass
    _OPEN.clear()


os.register_at_fork(after_in_child=_forget_inherited_envs)


def _open_handle(path: str) -> _Handle:
    """Check ``path/data.mdb`` (:class:`LmdbTree`), then open it with liblmdb."""
    for _attempt in range(5):
        tree = LmdbTree(os.path.join(path, "data.mdb"), path)
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
            txn = env.begin(write=False, buffers=False)
        except lmdb.Error as err:
            tree.close()
            raise StoreError(f"{path}: cannot open LMDB data: {err}") from None
        if txn.id() == tree.txnid:
            return _Handle(os.getpid(), tree, env, txn)
        # A writer committed between the check and the snapshot: check the new snapshot.
        txn.abort()
        env.close()
        tree.close()
    raise StoreError(f"{path}: the store keeps changing while it is opened; retry")


def open_env_readonly(path: str) -> lmdb.Transaction:
    """The calling process's read transaction on the store at ``path`` (opened on first use).

    Reading through it directly skips the leaf checks: use :func:`read_value` when the file
    may be damaged.
    """
    return _handle(path).txn


def _handle(path: str) -> _Handle:
    handle = _OPEN.get(path)
    if handle is not None and handle.pid == os.getpid():
        return handle
    if handle is not None:  # inherited through a fork that bypassed the at-fork hook
        _forget_inherited_envs()
    handle = _open_handle(path)
    _OPEN[path] = handle
    return handle


def read_value(path: str, key: bytes, where: str | None = None) -> bytes | None:
    """The value under ``key`` in the store at ``path`` (None if absent), read only after the
    leaf page liblmdb will look it up in has been checked.

    Raises:
        StoreError: the file is damaged (message names ``where``, default ``path``).
    """
    return _handle(path).get(key, where or path)


def close_env(path: str) -> None:
    """Close this process's handle on ``path`` (e.g. before the builder rewrites the store)."""
    handle = _OPEN.pop(path, None)
    if handle is not None:
        handle.close()


class LmdbStore(Store):
    """Read-only LMDB store. Safe to pass to forked or spawned DataLoader workers."""

    backend = "lmdb"

    def __init__(self, path, manifest: dict, descriptors: Iterable[str] | None = None):
        super().__init__(path, manifest, descriptors)
        if not (self.path / "data.mdb").is_file():
            raise StoreError(f"{self.path}: manifest present but data.mdb is missing")
        self._key = os.path.realpath(self.path)
        self._sizes: tuple[np.ndarray, np.ndarray] | None = None
        #: records and descriptor blobs read so far that carry no checksum (older stores)
        self.unchecked = 0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_sizes"] = None
        return state

    def _load(self, key: bytes, what: str) -> bytes:
        buf = read_value(self._key, key, f"{self.path}: {what}")
        if buf is None:
            raise StoreError(f"{self.path}: {what} missing from data.mdb (store damaged?)")
        return buf

    def _decode(self, key: bytes, what: str) -> dict:
        buf = self._load(key, what)
        try:
            record = decode_record(buf)
        except RecordError as err:
            raise RecordError(f"{self.path}: {what}: {err}") from None
        if not has_checksum(buf):
            self.unchecked += 1
        return record

    def get(self, index: int, descriptors: Sequence[str] | None = None) -> dict[str, Any]:
        i = self._check_index(index)
        rec = self._decode(graph_key(i), f"record {i}")
        for name in self.descriptors if descriptors is None else descriptors:
            what = f"descriptor {name!r} of record {i}"
            blob = self._decode(descriptor_key(name, i), what)
            if name not in blob or len(blob) != 2 or blob["id"] != rec["id"]:
                raise RecordError(f"{self.path}: {what}: holds {sorted(blob)} of {blob['id']!r}")
            rec[name] = blob[name]
        return rec

    def _load_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sizes is None:
            sizes = self._decode(SIZES_KEY, "size table")
            n_atoms, n_edges = sizes.get("n_atoms"), sizes.get("n_edges")
            if (
                n_atoms is None
                or n_edges is None
                or not n_atoms.shape == n_edges.shape == (len(self),)
            ):
                raise RecordError(f"{self.path}: size table does not match the manifest")
            self._sizes = (n_atoms.astype(np.int64), n_edges.astype(np.int64))
        return self._sizes

    def num_atoms(self) -> np.ndarray:
        return self._load_sizes()[0]

    def num_edges(self) -> np.ndarray:
        return self._load_sizes()[1]
