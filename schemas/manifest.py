"""The store manifest: a JSON file inside every store, readable without LMDB or Zarr.

``STORE/manifest.json`` describes the whole store (keys, all present in a finished store):

- ``format``: ``"fingerprint-pretrain-store"``; ``schema_version``: ``"MAJOR.MINOR"``;
  ``backend``: ``"lmdb"`` | ``"zarr"``; ``builder_version``; ``created`` (ISO 8601, UTC).
- ``cutoff`` (Å) and ``neighbour_policy`` (how edges were made: complete within the cutoff over
  all periodic images, zero-shift self pair excluded, nearest first per centre).
- ``sources``: ``[{"path", "sha256", "bytes", "format"}]`` of the input files.
- ``counts``: ``{"records", "atoms", "edges", "rejected", "inputs"}``.
- ``targets``: ``[{"name", "unit"}]``; the order of each record's ``targets`` array.
- ``descriptors``: ``{name: {"family", "params", "dim", "feature_names", "radius", "dtype",
  "codec", "stats": {"count", "mean", "std", "min", "max"}, "hash", ...}}``.
- ``graphs_hash``, ``content_hash``: see :func:`combine_content_hash`.
- ``manifest_digest``: sha256 of the keys that say what the records mean
  (:data:`DIGEST_KEYS`: cutoff, neighbour policy, counts, target names and units, every
  descriptor set's name, dim, feature names, parameters, dtype, statistics and hash, the
  hashes), see :func:`manifest_digest`. :func:`write_json_atomic` adds it to every store
  manifest it writes, and :func:`read_manifest` (so ``open_store``, ``fp-build verify`` and
  ``fp-train``) refuses a manifest that no longer matches it: an edited target name would
  otherwise make fine-tuning train on the wrong property. Manifests written before the digest
  existed have none and are read as they are (``fp-build verify`` says so). Timestamps, paths,
  build options and the backend are outside the digest (an export changes the backend).

- ``parts`` (LMDB stores of schema 2): ``{part: {"file", "bytes", "sha256"}}``, one part
  ``graphs`` (file ``graphs.mdb``) and one per label set (file ``labels-<set>.mdb``), exactly
  the sets of ``descriptors`` (see :mod:`schemas.lmdb_store`). Outside the digest (file
  checksums, not what the records mean), but checked: a file that is not the plain name its
  part must have (``../x``), a size that is not a non-negative integer or a sha256 that is not
  64 hex digits refuse the manifest.

A reader refuses a store whose *major* schema version it does not know; minor versions only add
optional keys (the record checksums and ``manifest_digest`` are such additions: readers that
predate them ignore them, so the schema version stayed 1.0). Major 2 (:data:`SCHEMA_VERSION`)
is the store of parts; major 1 (one ``data.mdb``) still reads, read-only. The content hash
does not depend on the layout (:func:`combine_content_hash`), so converting a store keeps it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "SchemaVersionError",
    "StoreError",
    "check_parts",
    "part_file",
    "check_schema_version",
    "schema_major",
    "combine_content_hash",
    "manifest_digest",
    "read_manifest",
    "write_json_atomic",
]

SCHEMA_VERSION = "2.0"
#: the schema major versions this code reads: 1 = one ``data.mdb`` (read-only), 2 = parts.
READ_MAJORS = (1, 2)
#: the major version inside content hashes: the records' meaning, unchanged since 1.0, so a
#: converted store and its legacy original hash alike.
_CONTENT_HASH_MAJOR = "1"
#: ``parts`` entries: the graphs part's file, and the pattern of a label set's file.
GRAPHS_PART = "graphs"
GRAPHS_FILE = "graphs.mdb"
LABEL_FILE = re.compile(r"labels-([A-Za-z0-9][A-Za-z0-9_.-]*)\.mdb")
_SHA256 = re.compile(r"[0-9a-f]{64}")
FORMAT_NAME = "fingerprint-pretrain-store"
MANIFEST_NAME = "manifest.json"
#: the manifest keys :func:`manifest_digest` covers.
DIGEST_KEYS = (
    "cutoff",
    "neighbour_policy",
    "counts",
    "targets",
    "descriptors",
    "graphs_hash",
    "content_hash",
)
DIGEST_KEY = "manifest_digest"


class StoreError(RuntimeError):
    """A store that is missing, incomplete, corrupt or otherwise unreadable."""


class SchemaVersionError(StoreError):
    """A store written under a schema major version this code does not read."""


def schema_major(found: Any, where: str | os.PathLike = "store") -> int:
    """The major version of ``found`` (``"MAJOR.MINOR"``) if this code reads it.

    Raises:
        SchemaVersionError: unreadable, or a major version not in :data:`READ_MAJORS`.
    """
    reads = " or ".join(f"{m}.x" for m in READ_MAJORS)
    try:
        major = int(str(found).split(".")[0])
    except (ValueError, AttributeError):
        raise SchemaVersionError(
            f"{where}: unreadable schema_version {found!r}; this code reads {reads}"
        ) from None
    if major not in READ_MAJORS:
        raise SchemaVersionError(
            f"{where}: store has schema_version {found}, this code reads schema {reads} "
            f"(written by fingerprint-pretrain with a different store format; rebuild the store "
            f"or use a matching version of the software)"
        )
    return major


def check_schema_version(found: str, where: str | os.PathLike = "store") -> None:
    """Raise :class:`SchemaVersionError` unless ``found`` has a major version we read."""
    schema_major(found, where)


def part_file(part: str) -> str:
    """The file name of a part: ``graphs.mdb`` or ``labels-<set>.mdb``."""
    return GRAPHS_FILE if part == GRAPHS_PART else f"labels-{part}.mdb"


def check_parts(manifest: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse malformed ``parts`` (required in an LMDB store of schema 2).

    Every entry must be ``{"file", "bytes", "sha256"}`` with ``file`` exactly the plain name of
    its part (:func:`part_file`), ``bytes`` a non-negative integer and ``sha256`` 64 lowercase
    hex digits; the parts must be ``graphs`` plus exactly the sets of ``descriptors``.

    Raises:
        StoreError: naming ``path`` and the bad entry.
    """
    parts = manifest.get("parts")
    lmdb2 = manifest.get("backend") == "lmdb" and schema_major(manifest.get("schema_version")) == 2
    if parts is None and not lmdb2:
        return

    def bad(what: str) -> StoreError:
        return StoreError(f"{path}: malformed manifest (parts: {what})")

    if not isinstance(parts, dict):
        raise bad("must be an object naming each part's file, bytes and sha256")
    if GRAPHS_PART in manifest.get("descriptors", {}):
        raise bad(f"a label set may not be named {GRAPHS_PART!r}")
    want = {GRAPHS_PART, *manifest.get("descriptors", {})}
    if set(parts) != want:
        extra, missing = sorted(set(parts) - want), sorted(want - set(parts))
        raise bad(f"parts {extra} are not label sets of the store; missing {missing}")
    for name, entry in parts.items():
        if not isinstance(entry, dict):
            raise bad(f"{name!r} must be an object")
        file = entry.get("file")
        if file != part_file(name) or not (name == GRAPHS_PART or LABEL_FILE.fullmatch(file)):
            raise bad(f"{name!r} names file {file!r}, not the plain name {part_file(name)!r}")
        if not (type(entry.get("bytes")) is int and entry["bytes"] >= 0):
            raise bad(f"{name!r} bytes must be a non-negative integer")
        if not (isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"])):
            raise bad(f"{name!r} sha256 must be 64 hex digits")


def read_manifest(store_path: str | os.PathLike) -> dict[str, Any]:
    """Load and check ``STORE/manifest.json``.

    Raises:
        StoreError: no manifest (not a store, or an unfinished build) or invalid JSON.
        SchemaVersionError: unknown schema major version.
    """
    if not Path(store_path).exists():
        raise StoreError(f"{store_path}: no such store")
    path = Path(store_path) / MANIFEST_NAME
    if not path.is_file():
        raise StoreError(
            f"{store_path}: not a finished store (no {MANIFEST_NAME}); "
            f"an interrupted build is resumed by re-running the same fp-build command"
        )
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise StoreError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise StoreError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise StoreError(f"{path}: not a {FORMAT_NAME} manifest")
    check_schema_version(manifest.get("schema_version"), path)
    _check_types(manifest, path)
    stored = manifest.get(DIGEST_KEY)
    if stored is not None and stored != manifest_digest(manifest):
        raise StoreError(
            f"{path}: edited after the store was written (its {DIGEST_KEY} no longer matches "
            f"its cutoff, counts, targets, descriptors and hashes); restore the original "
            f"manifest or rebuild the store"
        )
    check_parts(manifest, path)
    return manifest


def _check_types(manifest: dict[str, Any], path: Path) -> None:
    """Refuse a manifest whose keys that readers index have the wrong JSON types."""

    def bad(what: str) -> StoreError:
        return StoreError(f"{path}: malformed manifest ({what})")

    counts = manifest.get("counts")
    if not isinstance(counts, dict) or "records" not in counts:
        raise bad("counts must be an object with the number of records")
    for key, value in counts.items():
        if not (type(value) is int and value >= 0):
            raise bad(f"counts.{key} must be a non-negative integer")
    targets = manifest.get("targets", [])
    if not isinstance(targets, list) or not all(
        isinstance(t, dict) and isinstance(t.get("name"), str) for t in targets
    ):
        raise bad("targets must be a list of {name, unit}")
    descriptors = manifest.get("descriptors", {})
    if not isinstance(descriptors, dict) or not all(
        isinstance(d, dict) and type(d.get("dim", 0)) is int for d in descriptors.values()
    ):
        raise bad("descriptors must map names to entries with an integer dim")
    cutoff = manifest.get("cutoff", 1.0)
    if type(cutoff) not in (int, float):
        raise bad("cutoff must be a number")


def manifest_digest(manifest: dict[str, Any]) -> str:
    """``"sha256:<hex>"`` over the :data:`DIGEST_KEYS` of a manifest, as canonical JSON
    (sorted keys, no spaces; absent keys count as null). Stable across a JSON round trip."""
    covered = {key: manifest.get(key) for key in DIGEST_KEYS}
    text = json.dumps(covered, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file, fsync and rename (never half-written).

    A store manifest (``manifest.json`` of this format) is written with its
    ``manifest_digest`` recomputed, so every writer of manifests seals them.
    """
    path = Path(path)
    if path.name == MANIFEST_NAME and isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
        obj = {**obj, DIGEST_KEY: manifest_digest(obj)}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=False, allow_nan=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def combine_content_hash(graphs_hash: str, descriptor_hashes: dict[str, str]) -> str:
    """The store's identity: sha256 over the graph hash and each descriptor set's hash.

    ``graphs_hash`` is sha256 over the concatenated per-record digests
    (:func:`schemas.record.record_digest`, in record order); a descriptor set's hash is sha256
    over its per-record array digests. Timestamps, paths and backend do not enter the hash, so
    an LMDB store, its Zarr twin, a resumed build, and a single-file store and its conversion
    to parts all hash alike.
    """
    h = hashlib.sha256(f"{FORMAT_NAME}|{_CONTENT_HASH_MAJOR}|".encode())
    h.update(graphs_hash.encode())
    for name in sorted(descriptor_hashes):
        h.update(f"|{name}:{descriptor_hashes[name]}".encode())
    return "sha256:" + h.hexdigest()
