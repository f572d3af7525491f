"""Zarr array metadata, checked from the JSON files before Zarr decodes anything.

A Zarr store can declare object arrays, whose chunks Zarr 2.x decodes with a pickle-based codec
(running whatever the chunk holds), and arbitrary codecs or filters. :func:`check_zarr_metadata`
reads every metadata document of a store itself (``zarr.json`` for format 3, ``.zarray`` /
``.zgroup`` / ``.zmetadata`` for format 2), whatever Zarr version is installed, and refuses the
store unless each array declares

- a plain numeric or boolean data type (format 3 also allows ``string``, UTF-8 with the
  ``vlen-utf8`` codec, for ``id``); never ``object``;
- only codecs of :data:`V3_CODECS` (format 3) or a compressor of :data:`V2_COMPRESSORS` and no
  filters (format 2);
- a regular chunk grid with chunks of at most :data:`MAX_CHUNK_BYTES` (a tampered chunk shape
  cannot make a read allocate gigabytes).

Consolidated metadata, when present, is checked the same way (and the reader does not use it).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from fingerprint_pretrain.schemas.manifest import StoreError

__all__ = [
    "ArrayMeta",
    "MAX_CHUNK_BYTES",
    "V2_COMPRESSORS",
    "V3_CODECS",
    "check_zarr_metadata",
]

#: codecs a format-3 array may use: bytes serialisation (or vlen-utf8 for strings), then
#: compression and checksums. Everything else (including any numcodecs.* codec) is refused.
V3_CODECS = frozenset({"bytes", "vlen-utf8", "zstd", "gzip", "blosc", "crc32c"})
#: compressors a format-2 array may use (``filters`` must be null).
V2_COMPRESSORS = frozenset({"zstd", "blosc", "zlib", "gzip", "lz4", "bz2", "lzma"})
_V3_NUMERIC = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
    | {"float16", "float32", "float64"}
)
_V2_KINDS = "biuf"  # bool, signed, unsigned, float; "U"/"S" (fixed-width text) too, see below
#: the largest decoded chunk an array may declare, bytes.
MAX_CHUNK_BYTES = 1 << 28
_MAX_METADATA_BYTES = 1 << 22


class ArrayMeta(dict):
    """One array's checked metadata: ``{"path", "format", "dtype", "shape", "chunks",
    "checksum"}`` (``dtype`` a NumPy dtype name or ``"string"``; ``checksum``: whether its
    chunks carry a ``crc32c``)."""


def _load(path: Path, store: Path) -> dict[str, Any]:
    if path.stat().st_size > _MAX_METADATA_BYTES:
        raise StoreError(f"{store}: {path.relative_to(store)} is too large for Zarr metadata")
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, OSError) as err:
        raise StoreError(f"{store}: {path.relative_to(store)} is not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise StoreError(f"{store}: {path.relative_to(store)} is not a JSON object")
    return doc


def _refuse(store: Path, name: str, what: str) -> StoreError:
    return StoreError(
        f"{store}: array {name!r} {what}; refused (store arrays are plain numeric types with "
        f"standard compression, never objects, pickles or filters)"
    )


def _chunks_ok(store: Path, name: str, shape: Any, chunks: Any, itemsize: int) -> None:
    def ints(v: Any) -> bool:
        return isinstance(v, list) and all(type(d) is int and d >= 0 for d in v)

    if (
        not ints(shape)
        or not ints(chunks)
        or len(chunks) != len(shape)
        or any(c == 0 < s for s, c in zip(shape, chunks))  # 0 only along an empty axis
    ):
        raise _refuse(store, name, f"has shape {shape!r} / chunks {chunks!r}")
    if math.prod(chunks) * itemsize > MAX_CHUNK_BYTES:
        raise _refuse(store, name, f"declares chunks {chunks} over {MAX_CHUNK_BYTES} bytes")


def _check_v3(doc: dict, name: str, store: Path) -> ArrayMeta:
    dtype = doc.get("data_type")
    if dtype not in _V3_NUMERIC and dtype != "string":
        raise _refuse(store, name, f"declares data type {str(dtype)[:60]!r}")
    codecs = doc.get("codecs")
    if not isinstance(codecs, list) or not codecs:
        raise _refuse(store, name, "has no codec list")
    names = [c.get("name") if isinstance(c, dict) else None for c in codecs]
    bad = [n for n in names if n not in V3_CODECS]
    if bad:
        raise _refuse(store, name, f"uses codec {str(bad[0])[:60]!r}")
    first = "vlen-utf8" if dtype == "string" else "bytes"
    if names[0] != first or names.count(first) != 1 or "vlen-utf8" in names[1:]:
        raise _refuse(store, name, f"has codecs {names} for data type {dtype}")
    if doc.get("storage_transformers") not in (None, []):
        raise _refuse(store, name, "uses storage transformers")
    grid = doc.get("chunk_grid")
    if not isinstance(grid, dict) or grid.get("name") != "regular":
        raise _refuse(store, name, "has an irregular chunk grid")
    chunks = (grid.get("configuration") or {}).get("chunk_shape")
    itemsize = 16 if dtype == "string" else np.dtype(dtype).itemsize
    _chunks_ok(store, name, doc.get("shape"), chunks, itemsize)
    return ArrayMeta(
        path=name,
        format=3,
        dtype=dtype,
        shape=tuple(doc["shape"]),
        chunks=tuple(chunks),
        checksum="crc32c" in names,
    )


def _check_v2(doc: dict, name: str, store: Path) -> ArrayMeta:
    raw = doc.get("dtype")
    try:
        dtype = np.dtype(raw) if isinstance(raw, str) else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in _V2_KINDS + "US" or dtype.hasobject:
        raise _refuse(store, name, f"declares dtype {str(raw)[:60]!r}")
    if doc.get("filters") is not None:
        raise _refuse(store, name, "declares filters")
    compressor = doc.get("compressor")
    if compressor is not None and (
        not isinstance(compressor, dict) or compressor.get("id") not in V2_COMPRESSORS
    ):
        raise _refuse(store, name, f"uses compressor {str(compressor)[:60]!r}")
    if doc.get("order", "C") != "C":
        raise _refuse(store, name, "is not in C order")
    _chunks_ok(store, name, doc.get("shape"), doc.get("chunks"), dtype.itemsize)
    return ArrayMeta(
        path=name,
        format=2,
        dtype=dtype.name,
        shape=tuple(doc["shape"]),
        chunks=tuple(doc["chunks"]),
        checksum=False,
    )


def _check_entries(entries: Any, where: str, store: Path, out: dict[str, ArrayMeta]) -> None:
    """Consolidated metadata: ``{path: document}``; arrays are checked, not collected."""
    if not isinstance(entries, dict):
        raise StoreError(f"{store}: consolidated metadata in {where} is malformed")
    for key, doc in entries.items():
        if not isinstance(doc, dict):
            continue
        key = str(key)
        if key.endswith(".zarray"):
            _check_v2(doc, key[: -len(".zarray")].rstrip("/"), store)
        elif doc.get("node_type") == "array":
            _check_v3(doc, key, store)


def check_zarr_metadata(store: str | os.PathLike) -> dict[str, ArrayMeta]:
    """Check every array's metadata in the Zarr store at ``store``.

    Returns:
        ``{array path (e.g. "pos", "descriptors/eadset1"): ArrayMeta}``.

    Raises:
        StoreError: naming the store and the array, for any declaration outside the
            contract (see the module docstring) or unreadable metadata.
    """
    store = Path(store)
    out: dict[str, ArrayMeta] = {}
    for root, dirs, files in os.walk(store):
        dirs.sort()
        here = Path(root)
        name = here.relative_to(store).as_posix()
        name = "" if name == "." else name
        if "zarr.json" in files:
            doc = _load(here / "zarr.json", store)
            if doc.get("node_type") == "array":
                out[name] = _check_v3(doc, name, store)
                dirs[:] = []  # chunk files below
            elif doc.get("consolidated_metadata") is not None:
                consolidated = doc["consolidated_metadata"]
                metadata = consolidated.get("metadata") if isinstance(consolidated, dict) else 0
                _check_entries(metadata, f"{name or '.'}/zarr.json", store, out)
        if ".zarray" in files:
            out[name] = _check_v2(_load(here / ".zarray", store), name, store)
            dirs[:] = []
        if ".zmetadata" in files:
            _check_entries(
                _load(here / ".zmetadata", store).get("metadata"), ".zmetadata", store, out
            )
    return out
