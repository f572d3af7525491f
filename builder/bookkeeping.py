"""Build bookkeeping kept inside the LMDB environment (keys under ``b/``).

Progress, per-record digests and sizes, per-set digests and running statistics are written in
the same transaction as the records they describe, so they always agree with what is stored,
whenever the process dies. They stay in the finished store (a few dozen bytes per record).
"""

from __future__ import annotations

import hashlib

import numpy as np

from builder.labels import CastError, LabelConfig
from builder.lmdb_writer import LmdbWriter
from builder.provenance import environment
from builder.stats import FeatureStats
from schemas.manifest import StoreError
from schemas.record import decode_record, encode_record

CONFIG_KEY = b"b/config"
PROGRESS_KEY = b"b/progress"
REJECTED_PREFIX = b"b/rejected/"
RECORD_INFO_PREFIX = b"b/rec/"  # per record: 32-byte digest + n_atoms (u32) + n_edges (u32)


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
    from builder.descriptors.registry import get

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
