"""Build bookkeeping kept inside the LMDB environment (keys under ``b/``).

Progress, per-record digests and sizes, per-set digests and running statistics are written in
the same transaction as the records they describe, so they always agree with what is stored,
whenever the process dies. They stay in the finished store (a few dozen bytes per record).

:class:`StoreLock` keeps a second ``fp-build`` off a store (or partial store) that one is
writing: two writers would interleave their transactions and their manifest updates.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import sys
import warnings
from pathlib import Path

import numpy as np
from fingerprint_pretrain.builder.labels import CastError, LabelConfig
from fingerprint_pretrain.builder.lmdb_writer import LmdbWriter
from fingerprint_pretrain.builder.provenance import environment
from fingerprint_pretrain.builder.stats import FeatureStats
from fingerprint_pretrain.schemas.manifest import StoreError
from fingerprint_pretrain.schemas.record import decode_record, encode_record

CONFIG_KEY = b"b/config"
PROGRESS_KEY = b"b/progress"
REJECTED_PREFIX = b"b/rejected/"
RECORD_INFO_PREFIX = b"b/rec/"  # per record: 32-byte digest + n_atoms (u32) + n_edges (u32)


LOCK_NAME = "fp-build.lock"


class StoreBusyError(StoreError):
    """Another fp-build process holds the store's lock (the message names it)."""


class StoreLock:
    """An exclusive, non-blocking ``flock`` on ``DIRECTORY/fp-build.lock``, held for a whole run.

    The kernel drops the lock when its holder dies (``kill -9`` included), so a stale lock file
    never blocks anyone; the file's content (holder's PID, host, command, start time) is only
    there for the refusal message. The file is removed on release; a process that opened it just
    before that and locked it just after notices the replacement (different inode) and retries.

    Args:
        directory: the store or partial-store directory (must exist).
        store: the name shown in messages (e.g. the final store path while building its partial).
        action: what the holder does, e.g. ``"build"`` or ``"add"``.

    Raises:
        StoreBusyError: (from :meth:`acquire`) the lock is held by another process.
    """

    def __init__(self, directory: str | os.PathLike, store: str | os.PathLike, action: str):
        self.path = Path(directory) / LOCK_NAME
        self.store = str(store)
        self.action = action
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no locking
            return self
        for _attempt in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise StoreBusyError(
                    f"{self.store} is in use by another fp-build ({holder}); wait for it to "
                    f"finish or stop it, then rerun this command"
                ) from None
            except OSError as err:  # a file system without flock (some network mounts)
                os.close(fd)
                warnings.warn(
                    f"{self.path}: cannot lock ({err}); make sure no other fp-build writes "
                    f"{self.store} at the same time",
                    stacklevel=2,
                )
                return self
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                self._describe()
                return self
            os.close(fd)  # locked a file its previous holder had just removed: try again
        raise StoreBusyError(f"{self.store}: could not take {self.path}; rerun this command")

    def _describe(self) -> None:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "action": self.action,
            "command": " ".join(sys.argv),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, json.dumps(info).encode(), 0)
        except OSError:  # e.g. disk full: the lock holds all the same
            pass

    def moved_to(self, directory: str | os.PathLike) -> None:
        """The locked directory was renamed to ``directory`` (the lock stays held)."""
        self.path = Path(directory) / LOCK_NAME

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still locked here: nobody else can own it
        except OSError:
            pass
        os.close(self._fd)  # closing drops the lock
        self._fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    """Who holds a lock, from its file's content (best effort)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        info = {}
    if "pid" not in info:
        return "holder unknown"
    return (
        f"fp-build {info.get('action', '?')}, PID {info['pid']} on {info.get('host', '?')}, "
        f"since {info.get('since', '?')}"
    )


def label_digest_prefix(name: str) -> bytes:
    """Keys ``b/dig/<set>/<index>``: 32-byte digest of one record's array of the set."""
    return b"b/dig/%s/" % name.encode()


def stats_key(name: str) -> bytes:
    """Key of the merged :class:`FeatureStats` of a set so far (FPR1-encoded)."""
    return b"b/stats/%s" % name.encode()


def add_progress_key(name: str) -> bytes:
    """Key of ``fp-build add`` progress for one set."""
    return b"b/add/%s" % name.encode()


def pack_stats(stats: FeatureStats) -> bytes:
    return encode_record(
        "stats",
        {
            "count": np.array([stats.count], np.int64),
            "mean": stats.mean,
            "m2": stats.m2,
            "min": stats.min,
            "max": stats.max,
        },
    )


def unpack_stats(raw: bytes | None) -> FeatureStats | None:
    if raw is None:
        return None
    d = decode_record(raw)
    return FeatureStats(int(d["count"][0]), d["mean"], d["m2"], d["min"], d["max"])


def values_under(writer: LmdbWriter, prefix: bytes, n: int) -> list[bytes]:
    """The n values under ``prefix`` in key (= record) order; fails if any is missing."""
    values = [v for _, v in writer.prefixed(prefix)]
    if len(values) != n:
        raise StoreError(
            f"{writer.path}: expected {n} entries under {prefix!r}, found {len(values)}"
        )
    return values


def set_hash(writer: LmdbWriter, name: str, n: int) -> str:
    """A set's hash from its per-record digests (see :func:`schemas.store.compute_hashes`)."""
    digests = values_under(writer, label_digest_prefix(name), n)
    return "sha256:" + hashlib.sha256(b"".join(digests)).hexdigest()


def descriptor_entry(
    name: str,
    labels: LabelConfig,
    stats: FeatureStats | None,
    cast_error: CastError | None,
    digest: str,
    stored_bytes: int,
    n_atoms: int,
) -> dict:
    """The manifest entry of one descriptor set."""
    from fingerprint_pretrain.builder.descriptors.registry import get

    spec = get(name)
    stats = stats if stats is not None else FeatureStats.empty(spec.dim)
    return {
        "family": spec.family,
        "params": spec.params,
        "dim": spec.dim,
        "radius": spec.radius,
        "feature_names": list(spec.feature_names),
        "dtype": labels.dtype,
        "codec": labels.codec_of(name),
        "stored_bytes": int(stored_bytes),
        "bytes_per_atom": stored_bytes / max(n_atoms, 1),
        "cast_error": (cast_error or CastError()).to_dict(),
        "stats": stats.to_dict(),
        "hash": digest,
        "environment": environment(),
    }
