"""The parts of an LMDB store (layout in :mod:`schemas.lmdb_store`): writing, hashing, and
converting a single-file store.

A part is a compact single-file LMDB environment holding the keys of some prefixes, copied
from a working environment (``fp-build build``'s ``data.mdb`` in the partial directory,
``fp-build add``'s ``.labels-<set>.partial/``, or a single-file store's ``data.mdb``). It is
written under a hidden temporary name, fsynced and renamed into place, and never modified
afterwards: its size and sha256 go into ``manifest["parts"]``, and a reader that has it open
keeps reading the file it opened (a rename replaces the name, not the file).

:func:`convert` turns a single-file store (schema 1) into a store of parts in place, safe to
kill at any moment: the parts are written beside ``data.mdb`` under names the old manifest does
not use, the new manifest is swapped in by one rename, and only then is ``data.mdb`` removed;
a rerun removes whatever a killed run left.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import lmdb
from fingerprint_pretrain.builder.bookkeeping import StoreLock
from fingerprint_pretrain.builder.errors import BuildError
from fingerprint_pretrain.schemas.lmdb_file import LmdbTree
from fingerprint_pretrain.schemas.lmdb_store import LEGACY_FILE, close_env
from fingerprint_pretrain.schemas.manifest import (
    GRAPHS_PART,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    part_file,
    read_manifest,
    schema_major,
    write_json_atomic,
)

__all__ = [
    "GRAPH_PREFIXES",
    "clean_leftovers",
    "convert",
    "file_sha256",
    "label_prefix",
    "remove_working_env",
    "split_working_env",
    "write_part",
]

#: key prefixes of the graphs part: graph records and the size table.
GRAPH_PREFIXES = (b"g/", b"m/")
_TMP = ".tmp"  # suffix of a part being written (hidden name: ".<file>.tmp")
_WORK = ".work"  # suffix of the uncompacted copy a part is compacted from
_BATCH = 4096  # keys per write transaction while copying ...
_BATCH_BYTES = 32 << 20  # ... or fewer: at most this many value bytes held at once (memory)


def label_prefix(name: str) -> bytes:
    """Key prefix of a label set's records, ``d/<set>/``."""
    return b"d/%s/" % name.encode()


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in ``block``-byte pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_prefixes(source: lmdb.Transaction, prefixes: Sequence[bytes], work: Path) -> None:
    """Copy every key under ``prefixes`` (in key order) into a new environment ``work``."""
    env = lmdb.open(
        str(work),
        subdir=False,
        lock=False,
        map_size=1 << 30,
        max_dbs=0,
        readahead=False,
        meminit=True,  # zeroed unused bytes: the same keys give the same file
        sync=False,
        metasync=False,
    )
    try:
        batch: list[tuple[bytes, bytes]] = []
        held = 0  # value bytes in batch: bounded, whatever the records' sizes
        for prefix in prefixes:
            cursor = source.cursor()
            if not cursor.set_range(prefix):
                continue
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                batch.append((bytes(key), bytes(value)))
                held += len(value)
                if len(batch) >= _BATCH or held >= _BATCH_BYTES:
                    _put_all(env, batch)
                    batch, held = [], 0
        _put_all(env, batch)
        env.sync(True)
    finally:
        env.close()


def _put_all(env: lmdb.Environment, items: list[tuple[bytes, bytes]]) -> None:
    """Append ``items`` (ascending keys) in one transaction, growing the map when full."""
    while items:
        try:
            with env.begin(write=True) as txn:
                cursor = txn.cursor()
                for key, value in items:
                    cursor.put(key, value, append=True)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)


def write_part(source: lmdb.Transaction, prefixes: Sequence[bytes], dest: Path) -> dict:
    """Write the keys under ``prefixes`` of ``source``'s snapshot as the part file ``dest``.

    The keys are copied into ``.<name>.work``, compacted into ``.<name>.tmp`` (LMDB's compact
    copy: no free pages, so the file holds exactly its pages), fsynced and renamed to
    ``dest``.

    Returns:
        the part's manifest entry ``{"file", "bytes", "sha256"}``.
    """
    work = dest.with_name(f".{dest.name}{_WORK}")
    tmp = dest.with_name(f".{dest.name}{_TMP}")
    for leftover in (work, tmp):
        leftover.unlink(missing_ok=True)
    _copy_prefixes(source, prefixes, work)
    env = lmdb.open(str(work), subdir=False, lock=False, readonly=True, max_dbs=0)
    try:
        with open(tmp, "wb") as fh:
            env.copyfd(fh.fileno(), compact=True)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        env.close()
    work.unlink()
    entry = {"file": dest.name, "bytes": tmp.stat().st_size, "sha256": file_sha256(tmp)}
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)
    return entry


def split_working_env(
    source: lmdb.Transaction, directory: Path, label_sets: Sequence[str]
) -> dict[str, dict]:
    """The parts of a store from one environment holding all its keys: ``graphs.mdb`` and a
    ``labels-<set>.mdb`` per set, written into ``directory``. Returns ``manifest["parts"]``."""
    parts = {GRAPHS_PART: write_part(source, GRAPH_PREFIXES, directory / part_file(GRAPHS_PART))}
    for name in label_sets:
        parts[name] = write_part(source, [label_prefix(name)], directory / part_file(name))
    return parts


def remove_working_env(directory: Path) -> None:
    """Remove an LMDB working environment's files (``data.mdb``, ``lock.mdb``)."""
    for name in (LEGACY_FILE, "lock.mdb"):
        (directory / name).unlink(missing_ok=True)


def clean_leftovers(directory: Path) -> list[str]:
    """Remove the temporary files of parts a killed run was writing. Returns their names."""
    removed = []
    for path in directory.glob(".*.mdb*"):
        if path.is_file() and path.name.endswith((_TMP, _WORK)):
            path.unlink()
            removed.append(path.name)
    return removed


def convert(store: str | os.PathLike, stop_after_parts: bool = False) -> tuple[dict, bool]:
    """Convert the single-file store ``store`` into a store of parts, in place.

    Records, manifest digest and content hash stay as they are; the build's bookkeeping and
    any set an interrupted ``fp-build add`` left unlisted are not copied. Safe to kill (see the
    module docstring); holds the store's lock.

    Args:
        store: the store directory.
        stop_after_parts: stop before the manifest swap, as a kill would (tests).

    Returns:
        ``(manifest, converted)``: ``converted`` is False when it already was a store of parts.

    Raises:
        BuildError: a Zarr store. StoreError: not a store, or its ``data.mdb`` is damaged.
    """
    store = Path(store)
    read_manifest(store)  # a finished store at all? (before creating a lock file in it)
    with StoreLock(store, store, "convert"):
        manifest = read_manifest(store)
        if manifest.get("backend") != "lmdb":
            raise BuildError(f"{store}: only LMDB stores are made of parts (this is a Zarr store)")
        clean_leftovers(store)
        if schema_major(manifest["schema_version"], store) == 2:
            remove_working_env(store)  # a killed convert's old data.mdb, if any
            return manifest, False
        close_env(os.path.realpath(store))  # this process's read handle on data.mdb
        parts = _split_legacy(store, list(manifest.get("descriptors", {})))
        if stop_after_parts:
            return manifest, False
        manifest = {**manifest, "schema_version": SCHEMA_VERSION, "parts": parts}
        write_json_atomic(store / MANIFEST_NAME, manifest)
        remove_working_env(store)
    return manifest, True


def _split_legacy(store: Path, label_sets: list[str]) -> dict[str, dict]:
    """The parts of a single-file store, its ``data.mdb`` checked whole before it is read."""
    data = store / LEGACY_FILE
    tree = LmdbTree(data, store)
    try:
        tree.check_all()  # a cursor walks every leaf: none may point outside the file
        env = lmdb.open(str(data), subdir=False, readonly=True, lock=False, max_dbs=0)
        try:
            with env.begin(buffers=False) as txn:
                if txn.id() != tree.txnid:
                    raise BuildError(f"{store}: {LEGACY_FILE} changed while it was checked")
                return split_working_env(txn, store, label_sets)
        finally:
            env.close()
    finally:
        tree.close()
