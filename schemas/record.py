"""One structure record: the fields, their dtypes and shapes, and a pickle-free byte encoding.

A record is a dict of plain NumPy arrays plus the string ``id``:

====================  ==============  ================  =========================================
field                 dtype           shape             meaning
====================  ==============  ================  =========================================
``z``                 uint8           (N,)              atomic numbers
``pos``               float64         (N, 3)            Cartesian positions, Å
``cell``              float64         (3, 3)            lattice vectors as rows, Å
``pbc``               bool            (3,)              periodicity along each lattice vector
``edge_index``        int32           (2, E)            row 0 = neighbour j (source),
                                                        row 1 = centre i (target)
``edge_shift``        int8/16/32      (E, 3)            image offsets: vec = pos[j] + shift @ cell
                                                        - pos[i]; the narrowest of int8, int16,
                                                        int32 that holds every value (strongly
                                                        skewed cells need int32; never wrapped)
``edge_dist``         float32         (E,)              \\|vec\\|, Å
``targets``           float64         (T,)              named in the manifest's ``targets``, NaN
                                                        where missing
``id``                str             --                structure identifier
<descriptor set>      float32/16      (N, d)            per-atom labels, e.g. ``eadset1``
====================  ==============  ================  =========================================

Edges of each centre are sorted nearest first, so the nearest K are a slice.

Encoding (``FPR1``), chosen so a store outlives library upgrades (no pickle, no library-specific
serialisation; decodable with ``struct`` + ``json`` + ``numpy.frombuffer`` in any language)::

    b"FPR1" | uint32 LE header length H | H bytes UTF-8 JSON header | zero padding to 8 bytes |
    array buffers, each little-endian, C order, starting at a multiple of 8 bytes

The header is ``{"id": str, "fields": [[name, dtype_str, shape, offset, nbytes, codec], ...],
"crc32": "xxxxxxxx"}`` with offsets relative to the first byte after the padding. ``codec`` is
one of

- ``"raw"``: the array's bytes;
- ``"zlib"``: zlib (deflate) of the array's bytes;
- ``"shuffle-zlib"``: the bytes regrouped by significance (byte k of every element, for
  k = 0 … itemsize − 1, like Blosc's shuffle), then zlib level 1. Floats compress far better
  this way (EAD labels of 40 perovskites: 0.66 of raw vs 0.85 for plain zlib); used for
  large label sets.
- ``"shuffle-zstd"``: the same byte shuffle, then one Zstandard frame (RFC 8878, level 3)
  that records its content size. About as small as ``shuffle-zlib`` and 2.5-3.5x faster to
  decode (EAD set 2 of MP-20: 0.39-0.40 of raw vs 0.40, 80 vs 260 µs per 80 kB record,
  ``bench/results/loader.md``): the codec for label sets a trainer reads every epoch.

``raw``, ``zlib`` and ``shuffle-zlib`` decode with the Python standard library alone;
``shuffle-zstd`` needs a Zstandard decoder: here ``numcodecs.zstd`` (installed with Zarr, which
the Zarr twin uses for its own chunks), elsewhere any (libzstd, the ``zstd`` command, Python
3.14's ``compression.zstd``). A reader that predates it refuses such a field as an unknown
codec, naming it. Encoding is deterministic: the same arrays always give the same bytes (for
``shuffle-zstd``, with the same Zstandard library version), which resumed builds rely on; the
content hash is over the decoded arrays, so it does not depend on the codec.

**Integrity check.** ``"crc32"`` is always the header's last key, written as 8 lowercase hex
digits, so its value sits at a fixed place: the last 10 bytes of the header are
``xxxxxxxx"}``. It is ``zlib.crc32`` of the whole record *without* those 8 hex digits (magic,
header length, the rest of the header, padding and every buffer), and :func:`decode_record`
checks it on every decode (one pass over the bytes; its cost per record:
``bench/results/build.md``). Records written before checksums existed (schema 1.0 stores built
before the check was added) have a header of exactly ``{"id", "fields"}``: they still decode,
without the check (:func:`has_checksum` tells them apart; ``fp-build verify`` reports them).
Readers that predate the check ignore the key, so the format stays ``FPR1`` and the schema
version is unchanged; the content hash is defined over the decoded arrays, so it does not
change either.

**Untrusted bytes.** Decoding never trusts the header: the dtype must be a plain numeric or
boolean type (:data:`ALLOWED_DTYPES`, never ``object``), every size is checked against the
buffer before it is read (``shape · itemsize == nbytes`` for raw fields, ``offset + nbytes``
within the record), and a compressed field is inflated with a bounded ``decompressobj`` that
stops one byte past its declared size (a Zstandard frame must declare exactly the field's
size in its header and is decoded into a buffer of that size), so a damaged or hostile record
raises :class:`RecordError` instead of over-reading or allocating more than its declared (and
bounded, :data:`MAX_FIELD_BYTES`) size.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from collections.abc import Mapping

import numpy as np

__all__ = [
    "ALLOWED_DTYPES",
    "CODECS",
    "GRAPH_FIELDS",
    "MAX_FIELD_BYTES",
    "RecordError",
    "decode_record",
    "encode_record",
    "encode_graph_record",
    "array_digest",
    "descriptor_digest",
    "edge_vectors",
    "has_checksum",
    "record_digest",
    "shift_dtype",
    "validate_graph_record",
]

MAGIC = b"FPR1"
_ALIGN = 8

# name -> (allowed dtypes, shape template); "N" atoms, "E" edges, "T" targets, ints are fixed.
GRAPH_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str | int, ...]]] = {
    "z": (("uint8",), ("N",)),
    "pos": (("float64",), ("N", 3)),
    "cell": (("float64",), (3, 3)),
    "pbc": (("bool",), (3,)),
    "edge_index": (("int32",), (2, "E")),
    "edge_shift": (("int8", "int16", "int32"), ("E", 3)),
    "edge_dist": (("float32",), ("E",)),
    "targets": (("float64",), ("T",)),
}

#: dtype strings a record may declare (little-endian or byte-sized numeric and bool types).
ALLOWED_DTYPES: dict[str, np.dtype] = {
    s: np.dtype(s)
    for s in ("|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8")
}
#: the largest decoded size one field may declare, bytes (1 GiB: ~140,000 atoms of EAD set 2).
MAX_FIELD_BYTES = 1 << 30
_MAX_NDIM = 8
#: the codecs a field may be stored with (``fp-build --codec`` offers these and ``auto``).
CODECS = ("raw", "zlib", "shuffle-zlib", "shuffle-zstd")
# deflate cannot expand data by more than ~1032x: a declared size beyond that is a lie.
_MAX_INFLATION = 1032
# a Zstandard block holds at most 128 KiB, and the smallest (RLE) block takes 4 bytes: a frame
# cannot expand by more than 32768x.
_MAX_ZSTD_INFLATION = 1 << 15
_ZSTD_LEVEL = 3  # zstd's own default: 0.39 of raw on EAD labels, encodes ~4x faster than zlib 1
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CRC_KEY = b',"crc32":"'
_CRC_TAIL = len(_CRC_KEY) + 8 + 2  # ,"crc32":"xxxxxxxx"}


class RecordError(ValueError):
    """A record that does not follow the store contract (wrong field, dtype, shape or bytes)."""


def _le(dtype: np.dtype) -> np.dtype:
    """The little-endian version of a dtype (a no-op for 1-byte types and on x86/ARM)."""
    return dtype.newbyteorder("<") if dtype.byteorder not in ("<", "|", "=") else dtype


def encode_record(
    record_id: str, arrays: Mapping[str, np.ndarray], codecs: Mapping[str, str] | None = None
) -> bytes:
    """Serialise arrays (in the given order) and an id to ``FPR1`` bytes with a CRC-32.

    Args:
        record_id: structure identifier (any string).
        arrays: name -> array; stored in insertion order with its dtype and shape.
        codecs: optional name -> one of :data:`CODECS`; default raw.
    """
    codecs = codecs or {}
    entries = []
    buffers = []
    offset = 0
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        dt = _le(arr.dtype)
        if dt.str not in ALLOWED_DTYPES:
            raise RecordError(f"field {name!r}: dtype {arr.dtype} is not storable")
        raw = np.ascontiguousarray(arr, dtype=dt).tobytes()
        codec = codecs.get(name, "raw")
        if codec == "zlib":
            raw = zlib.compress(raw, 6)
        elif codec == "shuffle-zlib":
            raw = zlib.compress(_shuffle(raw, dt.itemsize), 1)
        elif codec == "shuffle-zstd":
            raw = _zstd().compress(_shuffle(raw, dt.itemsize), _ZSTD_LEVEL)
        elif codec != "raw":
            raise RecordError(f"unknown codec {codec!r} for field {name!r}")
        entries.append([name, dt.str, list(arr.shape), offset, len(raw), codec])
        pad = (-len(raw)) % _ALIGN
        buffers.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    header = json.dumps({"id": record_id, "fields": entries}, separators=(",", ":")).encode()
    return _framed(header[:-1], b"".join(buffers))


def _framed(header: bytes, body: bytes) -> bytes:
    """``FPR1`` bytes: magic, header length, the JSON header (given without its closing ``}``)
    completed with its CRC-32 key and digits, padding to ``_ALIGN``, then the field bytes.
    The CRC covers everything but its own 8 digits."""
    header += _CRC_KEY  # the digits and '"}' follow
    hlen = len(header) + 10
    head = MAGIC + struct.pack("<I", hlen) + header
    tail = b'"}' + b"\0" * ((-(8 + hlen)) % _ALIGN)
    crc = zlib.crc32(body, zlib.crc32(tail, zlib.crc32(head)))
    return head + b"%08x" % crc + tail + body


def has_checksum(buf: bytes | memoryview) -> bool:
    """Whether an ``FPR1`` record carries the CRC-32 (records written before it existed do not).

    Only looks at the header's fixed tail; :func:`decode_record` does the actual check.
    """
    if len(buf) < 8:
        return False
    (hlen,) = struct.unpack_from("<I", buf, 4)
    end = 8 + hlen
    return (
        _CRC_TAIL <= hlen and end <= len(buf) and bytes(buf[end - _CRC_TAIL : end - 10]) == _CRC_KEY
    )


def _check_crc(buf: bytes | memoryview, end: int) -> bool:
    """Verify the CRC of a record whose header ends at byte ``end``; False if it has none."""
    if end - 8 < _CRC_TAIL or bytes(buf[end - _CRC_TAIL : end - 10]) != _CRC_KEY:
        return False
    digits = bytes(buf[end - 10 : end - 2])
    if digits.strip(b"0123456789abcdef"):
        raise RecordError(f"malformed checksum {digits!r}: the record is damaged")
    view = memoryview(buf)
    crc = zlib.crc32(view[end - 2 :], zlib.crc32(view[: end - 10]))
    if crc != int(digits, 16):
        raise RecordError(
            f"checksum mismatch (stored {digits.decode('latin-1')}, bytes give {crc:08x}): "
            f"the record is damaged"
        )
    return True


def _inflate(data: memoryview, expected: int, name: str) -> bytes:
    """zlib-decompress ``data``, refusing a stream that does not inflate to exactly
    ``expected`` bytes (at most ``expected + 1`` bytes are ever produced)."""
    if expected > _MAX_INFLATION * len(data) + 64:
        raise RecordError(
            f"field {name!r}: declares {expected} bytes from a {len(data)}-byte zlib block"
        )
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, expected + 1)
    except zlib.error as err:
        raise RecordError(f"field {name!r}: damaged zlib data ({err})") from None
    if len(out) != expected or not inflater.eof or inflater.unused_data:
        raise RecordError(
            f"field {name!r}: zlib data inflates to "
            f"{'more than ' if len(out) > expected else ''}{len(out)} bytes"
            f"{'' if inflater.eof else ' (truncated stream)'}, declared {expected}"
        )
    return out


def _shuffle(raw: bytes, itemsize: int) -> bytes:
    """Regroup the bytes of ``itemsize``-byte elements by significance: byte k of every
    element, for k = 0 … itemsize − 1."""
    return np.frombuffer(raw, np.uint8).reshape(-1, itemsize).T.tobytes()


def _unshuffle(planes: bytes | np.ndarray, dt: np.dtype, count: int) -> np.ndarray:
    """Undo :func:`_shuffle`: ``count`` elements of ``dt`` from their byte planes.

    One contiguous-source copy per byte plane into the output's interleaved bytes: about half
    the time of transposing the (itemsize, count) byte matrix and copying it again.
    """
    src = np.frombuffer(planes, np.uint8, count * dt.itemsize).reshape(dt.itemsize, count)
    out = np.empty(count, dt)
    dst = out.view(np.uint8).reshape(count, dt.itemsize)
    for k in range(dt.itemsize):
        dst[:, k] = src[k]
    return out


_ZSTD_MODULE = None


def _zstd():
    """The Zstandard binding (``numcodecs.zstd``: a dependency of Zarr), imported on first use."""
    global _ZSTD_MODULE
    if _ZSTD_MODULE is None:
        try:
            from numcodecs import zstd
        except ImportError as err:  # pragma: no cover - numcodecs comes with zarr
            raise RecordError(f"codec 'shuffle-zstd' needs numcodecs ({err})") from None
        _ZSTD_MODULE = zstd
    return _ZSTD_MODULE


def _zstd_content_size(block: memoryview) -> int | None:
    """The Frame_Content_Size of the Zstandard frame starting ``block`` (RFC 8878, 3.1.1.1),
    or None when the block is no frame, uses a dictionary or does not record its size."""
    if len(block) < 6 or bytes(block[:4]) != _ZSTD_MAGIC:
        return None
    descriptor = block[4]
    fcs_flag, single_segment, dictionary = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    if dictionary or descriptor & 0x08:  # no dictionaries; bit 3 is reserved (must be 0)
        return None
    size_bytes = (single_segment, 2, 4, 8)[fcs_flag]
    first = 5 + (0 if single_segment else 1)  # Window_Descriptor unless single segment
    if not size_bytes or first + size_bytes > len(block):
        return None
    value = int.from_bytes(block[first : first + size_bytes], "little")
    return value + 256 if size_bytes == 2 else value


def _unzstd(block: memoryview, expected: int, name: str) -> np.ndarray:
    """Decode one Zstandard frame that must declare exactly ``expected`` bytes, into a buffer
    of that size (never more is allocated or written)."""
    if expected > _MAX_ZSTD_INFLATION * len(block) + 64:
        raise RecordError(
            f"field {name!r}: declares {expected} bytes from a {len(block)}-byte zstd block"
        )
    size = _zstd_content_size(block)
    if size != expected:
        raise RecordError(
            f"field {name!r}: not a zstd frame of {expected} bytes "
            f"({'no readable frame header' if size is None else f'frame holds {size}'})"
        )
    out = np.empty(expected, np.uint8)
    if expected:
        try:
            _zstd().decompress(block, out)
        except (RuntimeError, ValueError) as err:
            raise RecordError(f"field {name!r}: damaged zstd data ({err})") from None
    return out


def _decompress(block: memoryview, codec: str, dt: np.dtype, count: int, name: str) -> np.ndarray:
    """``count`` elements of ``dt`` from a compressed field's bytes (read-only)."""
    nbytes = count * dt.itemsize
    if codec == "shuffle-zstd":
        arr = _unshuffle(_unzstd(block, nbytes, name), dt, count)
    elif codec == "shuffle-zlib":
        arr = _unshuffle(_inflate(block, nbytes, name), dt, count)
    else:
        arr = np.frombuffer(_inflate(block, nbytes, name), dtype=dt, count=count)
    arr.flags.writeable = False  # like the raw fields' views of the record
    return arr


def _field_entry(entry, data_len: int) -> tuple[str, np.dtype, tuple, int, int, str, int]:
    """Check one header entry against the contract and the buffer; returns it unpacked plus
    its element count."""
    if not (isinstance(entry, list) and len(entry) == 6):
        raise RecordError(f"malformed field entry {str(entry)[:80]!r}")
    name, dtype, shape, offset, nbytes, codec = entry
    if not isinstance(name, str) or name == "id":
        raise RecordError(f"malformed field name {str(name)[:80]!r}")
    dt = ALLOWED_DTYPES.get(dtype) if isinstance(dtype, str) else None
    if dt is None:
        raise RecordError(f"field {name!r}: dtype {str(dtype)[:40]!r} is not allowed")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_NDIM
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise RecordError(f"field {name!r}: bad shape {str(shape)[:80]}")
    if codec not in CODECS:
        raise RecordError(f"field {name!r}: unknown codec {str(codec)[:40]!r}")
    if not (type(offset) is int and type(nbytes) is int and offset >= 0 and nbytes >= 0):
        raise RecordError(f"field {name!r}: bad offset/length {offset!r}/{nbytes!r}")
    if offset + nbytes > data_len:
        raise RecordError(
            f"field {name!r}: bytes [{offset}, {offset + nbytes}) beyond the record's "
            f"{data_len} data bytes"
        )
    count = math.prod(shape)
    size = count * dt.itemsize
    if size > MAX_FIELD_BYTES:
        raise RecordError(f"field {name!r}: declares {size} bytes (limit {MAX_FIELD_BYTES})")
    if codec == "raw" and nbytes != size:
        raise RecordError(
            f"field {name!r}: shape {shape} of {dt.str} needs {size} bytes, header says {nbytes}"
        )
    return name, dt, tuple(shape), offset, nbytes, codec, count


def decode_record(buf: bytes | memoryview, fields: set[str] | None = None) -> dict:
    """Decode ``FPR1`` bytes to ``{"id": str, name: read-only ndarray, ...}``.

    Verifies the CRC-32 when the record has one, and every declared size against the buffer.

    Args:
        buf: the encoded record.
        fields: if given, decode only these array fields (``id`` is always returned).

    Raises:
        RecordError: not an ``FPR1`` record, damaged bytes (checksum), or a header that
            declares sizes, dtypes or codecs the contract does not allow.
    """
    n = len(buf)
    if n < 8 or bytes(buf[:4]) != MAGIC:
        raise RecordError(f"not an FPR1 record (starts with {bytes(buf[:4])!r})")
    (hlen,) = struct.unpack_from("<I", buf, 4)
    end = 8 + hlen
    if end > n:
        raise RecordError(f"header length {hlen} beyond the record's {n} bytes")
    checked = _check_crc(buf, end)
    try:
        header = json.loads(bytes(buf[8:end]))
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise RecordError(f"unreadable header ({err})") from None
    keys = ("id", "fields", "crc32") if checked else ("id", "fields")
    if not isinstance(header, dict) or tuple(header) != keys:
        got = list(header) if isinstance(header, dict) else type(header).__name__
        raise RecordError(f"malformed header (keys {str(got)[:80]}, expected {list(keys)})")
    record_id, entries = header["id"], header["fields"]
    if not isinstance(record_id, str) or not isinstance(entries, list):
        raise RecordError("malformed header (id must be a string, fields a list)")
    start = end + (-end) % _ALIGN
    if start > n:
        raise RecordError(f"record of {n} bytes ends inside its header padding")
    data_len = n - start
    out: dict = {"id": record_id}
    for entry in entries:
        name, dt, shape, offset, nbytes, codec, count = _field_entry(entry, data_len)
        if name in out:
            raise RecordError(f"field {name!r} appears twice")
        if fields is not None and name not in fields:
            out[name] = None  # placeholder for the duplicate check, dropped below
            continue
        if codec == "raw":
            arr = np.frombuffer(buf, dtype=dt, count=count, offset=start + offset)
        else:
            block = memoryview(buf)[start + offset : start + offset + nbytes]
            arr = _decompress(block, codec, dt, count, name)
        out[name] = arr.reshape(shape)
    if fields is not None:
        out = {k: v for k, v in out.items() if v is not None}
    return out


def array_digest(h: hashlib._Hash, name: str, arr: np.ndarray) -> None:
    """Feed one array's logical content (name, dtype, shape, little-endian bytes) into ``h``.

    Independent of the codec it is stored with, so LMDB (raw or compressed) and Zarr copies of the
    same data hash alike.
    """
    arr = np.asarray(arr)
    dt = _le(arr.dtype)
    h.update(f"{name}|{dt.str}|{','.join(map(str, arr.shape))}|".encode())
    h.update(np.ascontiguousarray(arr, dtype=dt).tobytes())


def record_digest(record: Mapping) -> bytes:
    """sha256 digest of a graph record's logical content: id, then fields in GRAPH_FIELDS order."""
    h = hashlib.sha256()
    h.update(b"id|" + str(record["id"]).encode() + b"|")
    for name in GRAPH_FIELDS:
        array_digest(h, name, record[name])
    return h.digest()


def encode_graph_record(record: Mapping) -> tuple[bytes, bytes]:
    """``(encode_record(record["id"], graph fields), record_digest(record))``, byte for byte,
    in one pass: each field's bytes are made once and serve both (the two functions copy every
    field each). The builder's fast path for graph records (raw codec only).

    Args:
        record: a graph record (:func:`graph_records`): the id and every field of
            ``GRAPH_FIELDS`` as arrays of the contract's dtypes, stored raw.

    Returns:
        ``(FPR1 bytes with CRC-32, 32-byte sha256 digest)``.
    """
    record_id = record["id"]
    entries = []
    body = []
    digest = [b"id|" + str(record_id).encode() + b"|"]
    offset = 0
    for name in GRAPH_FIELDS:
        arr = np.asarray(record[name])
        dt = arr.dtype
        if dt.byteorder == ">":
            dt = dt.newbyteorder("<")
            arr = arr.astype(dt)
        if dt.str not in ALLOWED_DTYPES:
            raise RecordError(f"field {name!r}: dtype {arr.dtype} is not storable")
        raw = arr.tobytes()  # C order, whatever the strides
        n = len(raw)
        shape = ",".join(map(str, arr.shape))
        entries.append(f'["{name}","{dt.str}",[{shape}],{offset},{n},"raw"]')
        body.append(raw)
        pad = -n % _ALIGN
        if pad:
            body.append(b"\0" * pad)
        offset += n + pad
        digest.append(f"{name}|{dt.str}|{shape}|".encode())
        digest.append(raw)
    # json.dumps({"id": ..., "fields": ...}, separators=(",", ":")) without its '}', written
    # out: the names and dtype strings are plain ASCII, so only the id needs JSON escaping
    fields = ",".join(entries)
    header = f'{{"id":{json.dumps(record_id)},"fields":[{fields}]'.encode()
    return _framed(header, b"".join(body)), hashlib.sha256(b"".join(digest)).digest()


def descriptor_digest(name: str, arr: np.ndarray) -> bytes:
    """sha256 digest of one record's descriptor array (logical content, codec-independent)."""
    h = hashlib.sha256()
    array_digest(h, name, arr)
    return h.digest()


def shift_dtype(edge_shift: np.ndarray) -> np.dtype:
    """The contract's dtype for image offsets: the narrowest of int8, int16 and int32 that holds
    every value (a strongly skewed cell can need shifts of tens of thousands of cells).

    Raises:
        RecordError: a value beyond int32 (never stored wrapped).
    """
    if edge_shift.size == 0:
        return _SHIFT_TYPES[0][0]
    lo, hi = int(edge_shift.min()), int(edge_shift.max())
    for dtype, smallest, largest in _SHIFT_TYPES:
        if smallest <= lo and hi <= largest:
            return dtype
    raise RecordError(f"image offsets up to {max(-lo, hi)} cells do not fit in int32")


_SHIFT_TYPES = tuple(
    (np.dtype(t), int(np.iinfo(t).min), int(np.iinfo(t).max)) for t in (np.int8, np.int16, np.int32)
)


def validate_graph_record(record: Mapping, n_targets: int | None = None) -> None:
    """Raise :class:`RecordError` unless ``record`` has every graph field with the contract's
    dtype and a consistent shape (N atoms, E edges, T targets), ``edge_index`` within
    [0, N), finite positions and cell, and finite positive edge distances."""
    if not isinstance(record.get("id"), str):
        raise RecordError("record needs a string 'id'")
    sizes: dict[str, int] = {}
    if n_targets is not None:
        sizes["T"] = n_targets
    for name, (dtypes, template) in GRAPH_FIELDS.items():
        if name not in record:
            raise RecordError(f"record {record['id']!r}: missing field {name!r}")
        arr = np.asarray(record[name])
        if arr.dtype.name not in dtypes:
            raise RecordError(
                f"record {record['id']!r}: field {name!r} has dtype {arr.dtype.name}, "
                f"expected {' or '.join(dtypes)}"
            )
        if arr.ndim != len(template):
            raise RecordError(
                f"record {record['id']!r}: field {name!r} has shape {arr.shape}, "
                f"expected {template}"
            )
        for dim, want in zip(arr.shape, template):
            if isinstance(want, int):
                ok = dim == want
            else:
                ok = sizes.setdefault(want, dim) == dim
            if not ok:
                raise RecordError(
                    f"record {record['id']!r}: field {name!r} has shape {arr.shape}, "
                    f"inconsistent with {template} (sizes so far {sizes})"
                )
    n_atoms = sizes["N"]
    ei = np.asarray(record["edge_index"])
    if ei.size and (ei.min() < 0 or ei.max() >= n_atoms):
        raise RecordError(f"record {record['id']!r}: edge_index out of range [0, {n_atoms})")
    for name in ("pos", "cell"):
        if not np.isfinite(record[name]).all():
            raise RecordError(f"record {record['id']!r}: non-finite values in {name!r}")
    dist = np.asarray(record["edge_dist"])
    if dist.size and not (np.isfinite(dist).all() and dist.min() > 0):
        raise RecordError(f"record {record['id']!r}: edge_dist not finite and positive")


def edge_vectors(
    pos: np.ndarray, cell: np.ndarray, edge_index: np.ndarray, edge_shift: np.ndarray
) -> np.ndarray:
    """The edge vectors of a record: ``vec = pos[j] + edge_shift @ cell - pos[i]``.

    The one place this formula is written (builder, trainer and the PyG view all call it).

    Args:
        pos: (N, 3) float64 Cartesian positions, Å.
        cell: (3, 3) float64 lattice vectors as rows, Å.
        edge_index: (2, E) integer; row 0 = neighbour j, row 1 = centre i.
        edge_shift: (E, 3) integer image offsets of j (any integer or float dtype).

    Returns:
        (E, 3) float64 vectors from atom i to the image of atom j, Å (evaluated in this order:
        ``(pos[j] + shift @ cell) - pos[i]``, with ``np.take`` and a float shift matrix, which
        is several times faster than fancy indexing and an integer matmul).
    """
    neighbour, centre = np.asarray(edge_index)
    vectors = np.take(pos, neighbour, axis=0)
    vectors += np.asarray(edge_shift, dtype=np.float64) @ cell
    vectors -= np.take(pos, centre, axis=0)
    return vectors
