"""LMDB store layout and its reader.

A store of parts (schema 2, what ``fp-build build`` writes) is one flat directory
``STORE.lmdb/``: ``manifest.json`` (written last), ``graphs.mdb`` (graph records and the size
table), one ``labels-<set>.mdb`` per descriptor set, ``rejected.csv`` and, for a store fetched
from a URL, ``origin.json``. Each ``.mdb`` is a compact single-file LMDB environment written
once and never modified (so its size and sha256, listed in ``manifest["parts"]``, stay valid
and a reader never sees it change); adding a set writes a new file and then the manifest. A
single-file store (schema 1: one ``data.mdb`` holding every key and the build's bookkeeping)
still reads, read-only. Keys, the same in both layouts:

- ``g/<index:010d>`` (graphs part): the graph record (``FPR1`` bytes, :mod:`schemas.record`);
- ``m/sizes`` (graphs part): ``FPR1`` with ``n_atoms`` (R,) int32 and ``n_edges`` (R,) int32;
- ``d/<set>/<index:010d>`` (part of the set): one descriptor set of one record (``FPR1`` with
  the single field ``<set>``, possibly zlib-compressed). A set is part of the store only once
  the manifest lists it, so an interrupted ``fp-build add`` never exposes partial labels.

A set is *present* when its part's file is here; a part listed in the manifest but not here
(a store fetched without all its sets) is *absent*: the store opens without it, and asking for
it raises :class:`~schemas.manifest.StoreError` naming the set and how to get it. A present
part whose size is not the manifest's is refused when it is read (damaged or cut short).

Opening is lazy and per process and part (``readonly=True, lock=False``): each file is opened
on first access in each process, and a forked DataLoader worker drops the handles it inherited
and opens its own (py-lmdb refuses a second open of the same path in one process, and LMDB
handles must not cross ``fork``).

Damaged files give :class:`~fingerprint_pretrain.schemas.manifest.StoreError` (or
:class:`~schemas.record.RecordError` for a damaged record), never a crash: before liblmdb maps
a part, :class:`schemas.lmdb_file.LmdbTree` checks its meta and branch pages (a truncated file
would otherwise kill the process with ``SIGBUS``), and before each key is looked up, the leaf
page it lives in (once per process and page); liblmdb's own errors name the store and file,
and every record's CRC-32 is checked when it is decoded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
from fingerprint_pretrain.schemas.lmdb_file import LmdbTree
from fingerprint_pretrain.schemas.manifest import GRAPHS_FILE, GRAPHS_PART, StoreError, schema_major
from fingerprint_pretrain.schemas.record import RecordError, decode_record, has_checksum
from fingerprint_pretrain.schemas.store import Store

__all__ = [
    "LEGACY_FILE",
    "LmdbStore",
    "SIZES_KEY",
    "close_env",
    "descriptor_key",
    "graph_key",
    "open_env_readonly",
    "read_value",
]

SIZES_KEY = b"m/sizes"
#: the one file of a single-file store (schema 1).
LEGACY_FILE = "data.mdb"


def graph_key(index: int) -> bytes:
    return b"g/%010d" % index


def descriptor_key(name: str, index: int) -> bytes:
    return b"d/%s/%010d" % (name.encode(), index)


@dataclass
class _Handle:
    """One process's read-only view of one LMDB file (a part, or a legacy ``data.mdb``).

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
            raise StoreError(f"{where}: {self.tree.path.name} is damaged ({err})") from None

    def close(self) -> None:
        self.tree.close()
        self.env.close()


# file -> this process's handle: one read-only environment and one long-lived read transaction
# per process and LMDB file (keyed by the file's real path).
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


def _file_of(path: str) -> str:
    """The LMDB file ``path`` names: itself, or for a store directory its graphs part (its
    ``data.mdb`` if it is a single-file store)."""
    if not os.path.isdir(path):
        return path
    graphs = os.path.join(path, GRAPHS_FILE)
    return graphs if os.path.exists(graphs) else os.path.join(path, LEGACY_FILE)


def _open_handle(file: str, store: str) -> _Handle:
    """Check ``file`` (:class:`LmdbTree`), then open it with liblmdb (errors name ``store``)."""
    for _attempt in range(5):
        tree = LmdbTree(file, store)
        try:
            env = lmdb.open(
                file,
                subdir=False,
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
            raise StoreError(
                f"{store}: cannot open LMDB data {os.path.basename(file)}: {err}"
            ) from None
        if txn.id() == tree.txnid:
            return _Handle(os.getpid(), tree, env, txn)
        # A writer committed between the check and the snapshot: check the new snapshot.
        txn.abort()
        env.close()
        tree.close()
    raise StoreError(f"{store}: {os.path.basename(file)} keeps changing while it is opened; retry")


def open_env_readonly(path: str) -> lmdb.Transaction:
    """The calling process's read transaction on the LMDB file ``path`` (a store directory:
    its graphs part), opened on first use.

    Reading through it directly skips the leaf checks: use :func:`read_value` when the file
    may be damaged.
    """
    file = _file_of(path)
    return _handle(file, os.path.dirname(file)).txn


def _handle(file: str, store: str) -> _Handle:
    handle = _OPEN.get(file)
    if handle is not None and handle.pid == os.getpid():
        return handle
    if handle is not None:  # inherited through a fork that bypassed the at-fork hook
        _forget_inherited_envs()
    handle = _open_handle(file, store)
    _OPEN[file] = handle
    return handle


def read_value(path: str, key: bytes, where: str | None = None) -> bytes | None:
    """The value under ``key`` in the LMDB file ``path`` (a store directory: its graphs part;
    None if absent), read only after the leaf page liblmdb will look it up in has been
    checked.

    Raises:
        StoreError: the file is damaged (message names ``where``, default the file's store).
    """
    file = _file_of(path)
    store = os.path.dirname(file)
    return _handle(file, store).get(key, where or store)


def close_env(path: str) -> None:
    """Close this process's handles on the LMDB file ``path``, or on every file of the store
    directory ``path`` (e.g. before the builder replaces the store)."""
    inside = path.rstrip(os.sep) + os.sep
    for file in [f for f in _OPEN if f == path or f.startswith(inside)]:
        _OPEN.pop(file).close()


class LmdbStore(Store):
    """Read-only LMDB store (of parts, or single-file). Safe to pass to forked or spawned
    DataLoader workers."""

    backend = "lmdb"

    def __init__(self, path, manifest: dict, descriptors: Iterable[str] | None = None):
        self.path = Path(path)
        self._where = str(self.path)
        self.legacy = schema_major(manifest.get("schema_version"), self.path) == 1
        parts = manifest.get("parts", {})
        root = os.path.realpath(self.path)
        #: part name -> (real path of its file, bytes the manifest lists or None)
        self._files: dict[str, tuple[str, int | None]] = {
            name: (
                os.path.join(root, LEGACY_FILE if self.legacy else parts[name]["file"]),
                None if self.legacy else parts[name]["bytes"],
            )
            for name in (GRAPHS_PART, *manifest.get("descriptors", {}))
        }
        #: part name -> "present", "absent", or why its file cannot be read (wrong size)
        self._state = {name: self._part_state(name) for name in self._files}
        if self._state[GRAPHS_PART] != "present":
            graphs = os.path.basename(self._files[GRAPHS_PART][0])
            state = self._state[GRAPHS_PART]
            raise StoreError(
                f"{self.path}: manifest present but {graphs} is missing"
                if state == "absent"
                else state
            )
        self._present = [n for n in self._files if n != GRAPHS_PART and self._state[n] == "present"]
        super().__init__(path, manifest, descriptors)
        if descriptors is None:  # damage is never silent: a cut-short part is no absent one
            self._check_damage(self.available_descriptors)
        self._ok = set(self.descriptors)
        self._sizes: tuple[np.ndarray, np.ndarray] | None = None
        #: records and descriptor blobs read so far that carry no checksum (older stores)
        self.unchecked = 0

    def _part_state(self, part: str) -> str:
        """``"present"`` (its file is here with the manifest's size), ``"absent"`` (no file),
        or a one-line StoreError message (a file of another size: damaged or cut short)."""
        file, want = self._files[part]
        try:
            size = os.stat(file).st_size
        except FileNotFoundError:
            return "absent"
        except OSError as err:
            return f"{self.path}: cannot read {os.path.basename(file)}: {err.strerror}"
        if want is None or size == want:
            return "present"
        state = "is truncated" if size < want else "is damaged"
        return (
            f"{self.path}: {os.path.basename(file)} {state} ({size:,} bytes, the manifest "
            f"lists {want:,}); fetch it again, or run fp-build verify"
        )

    def _present_sets(self) -> list[str]:
        return list(self._present)

    def _check_damage(self, names: Sequence[str]) -> None:
        """Raise the StoreError of the first of ``names`` whose file has the wrong size."""
        for name in names:
            state = self._state.get(name, "absent")
            if state not in ("present", "absent"):
                raise StoreError(state)

    def _check_readable(self, names: Sequence[str]) -> None:
        self._check_damage(names)
        super()._check_readable([n for n in names if self._state.get(n) != "present"])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_sizes"] = None
        return state

    def _load(self, part: str, key: bytes, what: str) -> bytes:
        file = self._files[part][0]
        buf = _handle(file, self._where).get(key, f"{self._where}: {what}")
        if buf is None:
            raise StoreError(
                f"{self.path}: {what} missing from {os.path.basename(file)} (store damaged?)"
            )
        return buf

    def _decode(self, part: str, key: bytes, what: str) -> dict:
        buf = self._load(part, key, what)
        try:
            record = decode_record(buf)
        except RecordError as err:
            raise RecordError(f"{self.path}: {what}: {err}") from None
        if not has_checksum(buf):
            self.unchecked += 1
        return record

    def get(self, index: int, descriptors: Sequence[str] | None = None) -> dict[str, Any]:
        i = self._check_index(index)
        rec = self._decode(GRAPHS_PART, graph_key(i), f"record {i}")
        for name in self.descriptors if descriptors is None else descriptors:
            if name not in self._ok:
                self._check_readable([name])
                self._ok.add(name)
            what = f"descriptor {name!r} of record {i}"
            blob = self._decode(name, descriptor_key(name, i), what)
            if name not in blob or len(blob) != 2 or blob["id"] != rec["id"]:
                raise RecordError(f"{self.path}: {what}: holds {sorted(blob)} of {blob['id']!r}")
            rec[name] = blob[name]
        return rec

    def _load_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sizes is None:
            sizes = self._decode(GRAPHS_PART, SIZES_KEY, "size table")
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
