"""The FPR1 record encoding: lossless, deterministic, pickle-free, readable without our code."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from fingerprint_pretrain.schemas.record import (
    RecordError,
    decode_record,
    descriptor_digest,
    encode_record,
    has_checksum,
    shift_dtype,
    validate_graph_record,
)


def sample_record(n=3, e=5):
    rng = np.random.default_rng(1)
    return {
        "id": "mp-149 ünïcode",
        "z": np.array([14, 8, 8], np.uint8)[:n],
        "pos": rng.normal(size=(n, 3)),
        "cell": np.eye(3) * 5.43,
        "pbc": np.array([True, True, False]),
        "edge_index": rng.integers(0, n, size=(2, e)).astype(np.int32),
        "edge_shift": rng.integers(-2, 3, size=(e, 3)).astype(np.int8),
        "edge_dist": rng.uniform(1, 8, size=e).astype(np.float32),
        "targets": np.array([1.5, np.nan]),
    }


def fields(rec):
    return {k: v for k, v in rec.items() if k != "id"}


def test_roundtrip_is_lossless_and_deterministic():
    rec = sample_record()
    buf = encode_record(rec["id"], fields(rec))
    assert buf == encode_record(rec["id"], fields(rec))
    out = decode_record(buf)
    assert out["id"] == rec["id"]
    for k, v in fields(rec).items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        np.testing.assert_array_equal(out[k], v)


def test_decodes_with_struct_json_and_numpy_alone():
    """The layout is what the docstring says: any language can read it without our code."""
    rec = sample_record()
    buf = encode_record(rec["id"], fields(rec))
    assert buf[:4] == b"FPR1" and b"pickle" not in buf and b"\x80\x04" not in buf[:16]
    (hlen,) = struct.unpack("<I", buf[4:8])
    header = json.loads(buf[8 : 8 + hlen])
    start = 8 + hlen + (-(8 + hlen)) % 8
    name, dtype, shape, offset, nbytes, codec = header["fields"][1]
    assert name == "pos" and dtype == "<f8" and codec == "raw" and start % 8 == 0
    pos = np.frombuffer(buf[start + offset : start + offset + nbytes], "<f8").reshape(shape)
    np.testing.assert_array_equal(pos, rec["pos"])


def test_big_endian_input_is_stored_little_endian():
    arr = np.arange(6, dtype=">f8").reshape(2, 3)
    out = decode_record(encode_record("x", {"a": arr}))["a"]
    assert out.dtype == np.dtype("<f8")
    np.testing.assert_array_equal(out, arr)


def test_zlib_codec_roundtrip_and_digest_is_codec_independent():
    arr = np.random.default_rng(0).normal(size=(7, 960)).astype(np.float32)
    raw = encode_record("x", {"ead": arr})
    packed = encode_record("x", {"ead": arr}, {"ead": "zlib"})
    np.testing.assert_array_equal(decode_record(packed)["ead"], arr)
    assert descriptor_digest("ead", decode_record(raw)["ead"]) == descriptor_digest(
        "ead", decode_record(packed)["ead"]
    )
    with pytest.raises(RecordError, match="unknown codec"):
        encode_record("x", {"ead": arr}, {"ead": "lz77"})


def test_decode_subset_of_fields_and_bad_magic():
    rec = sample_record()
    out = decode_record(encode_record(rec["id"], fields(rec)), fields={"z"})
    assert set(out) == {"id", "z"}
    with pytest.raises(RecordError, match="not an FPR1 record"):
        decode_record(b"\x80\x04pickle-ish")


def test_validate_graph_record_catches_contract_violations():
    rec = sample_record()
    validate_graph_record(rec, n_targets=2)
    bad = dict(rec, pos=rec["pos"].astype(np.float32))
    with pytest.raises(RecordError, match="'pos' has dtype float32, expected float64"):
        validate_graph_record(bad)
    bad = dict(rec, edge_dist=rec["edge_dist"][:-1])
    with pytest.raises(RecordError, match="edge_dist"):
        validate_graph_record(bad)
    bad = dict(rec, edge_index=rec["edge_index"] + 10)
    with pytest.raises(RecordError, match="out of range"):
        validate_graph_record(bad)
    bad = {k: v for k, v in rec.items() if k != "cell"}
    with pytest.raises(RecordError, match="missing field 'cell'"):
        validate_graph_record(bad)


def test_shift_dtype_rule():
    assert shift_dtype(np.array([[127, -128, 0]])) == np.int8
    assert shift_dtype(np.array([[128, 0, 0]])) == np.int16
    assert shift_dtype(np.zeros((0, 3), int)) == np.int8


def legacy_record(record_id: str, arrays: dict) -> bytes:
    """A record as written before checksums existed, built from the documented layout alone:
    header {"id", "fields"}, no "crc32"."""
    entries, body = [], b""
    for name, arr in arrays.items():
        raw = np.ascontiguousarray(arr).tobytes()
        entries.append([name, arr.dtype.str, list(arr.shape), len(body), len(raw), "raw"])
        body += raw + b"\0" * ((-len(raw)) % 8)
    return crafted({"id": record_id, "fields": entries}, body, checksum=False)


def crafted(header: dict, body: bytes, checksum: bool = True) -> bytes:
    """Bytes with any header (sizes as given, however absurd), with a valid CRC-32 computed
    from the documented rule (crc32 of the record without the 8 digits) when asked."""
    text = json.dumps(header, separators=(",", ":")).encode()
    if checksum:
        text = text[:-1] + b',"crc32":"00000000"}'
    head = b"FPR1" + struct.pack("<I", len(text)) + text
    record = head + b"\0" * ((-len(head)) % 8) + body
    if not checksum:
        return record
    end = len(head)
    crc = zlib.crc32(record[: end - 10] + record[end - 2 :])
    return record[: end - 10] + b"%08x" % crc + record[end - 2 :]


@pytest.mark.parametrize("codec", ["shuffle-zlib", "shuffle-zstd"])
def test_every_single_byte_change_is_detected(codec):
    """The integrity check: no changed byte anywhere (magic, header, padding, buffers) decodes
    silently, for raw and compressed fields alike."""
    rec = sample_record()
    arrays = dict(fields(rec), ead=np.linspace(0, 1, 64, dtype=np.float32).reshape(4, 16))
    buf = encode_record(rec["id"], arrays, {"ead": codec})
    assert has_checksum(buf)
    rng = np.random.default_rng(0)
    for k in range(len(buf)):
        damaged = bytearray(buf)
        damaged[k] ^= int(rng.integers(1, 256))
        with pytest.raises(RecordError):
            decode_record(bytes(damaged))


def test_checksum_is_the_documented_crc32():
    rec = sample_record()
    buf = encode_record(rec["id"], fields(rec))
    (hlen,) = struct.unpack("<I", buf[4:8])
    end = 8 + hlen
    assert buf[end - 20 : end - 10] == b',"crc32":"' and buf[end - 2 : end] == b'"}'
    assert int(buf[end - 10 : end - 2], 16) == zlib.crc32(buf[: end - 10] + buf[end - 2 :])
    # a record of the same layout built independently from that rule decodes
    entries = json.loads(buf[8:end])["fields"]
    again = crafted({"id": rec["id"], "fields": entries}, buf[end + (-end) % 8 :])
    assert again == buf


def test_records_without_checksum_still_decode():
    rec = sample_record()
    buf = legacy_record(rec["id"], fields(rec))
    assert not has_checksum(buf)
    out = decode_record(buf)
    for k, v in fields(rec).items():
        np.testing.assert_array_equal(out[k], v)
    # ... but a header that is neither form is refused (e.g. a damaged "crc32" key)
    damaged = encode_record(rec["id"], fields(rec)).replace(b'"crc32"', b'"crc33"')
    with pytest.raises(RecordError, match="malformed header"):
        decode_record(damaged)


ONE = np.arange(4, dtype=np.float64)


@pytest.mark.parametrize(
    "entry,body,message",
    [
        (["a", "<f8", [-4], 0, 32, "raw"], ONE.tobytes(), "bad shape"),
        (["a", "<f8", [1 << 40], 0, 32, "raw"], ONE.tobytes(), "limit"),
        (["a", "<f8", [1 << 26], 0, 32, "raw"], ONE.tobytes(), "needs 536870912 bytes"),
        (["a", "<f8", [4], 0, 64, "raw"], ONE.tobytes(), "beyond the record"),
        (["a", "<f8", [4], 1 << 62, 32, "raw"], ONE.tobytes(), "beyond the record"),
        (["a", "<f8", [5], 0, 32, "raw"], ONE.tobytes(), "needs 40 bytes"),
        (["a", "|O", [4], 0, 32, "raw"], ONE.tobytes(), "not allowed"),
        (["a", "V8", [4], 0, 32, "raw"], ONE.tobytes(), "not allowed"),
        (["a", "<f8", [4], 0, 32, "pickle"], ONE.tobytes(), "unknown codec"),
        (["a", "<f8", "4", 0, 32, "raw"], ONE.tobytes(), "bad shape"),
        (["a", "<f8", [4], 0], ONE.tobytes(), "malformed field entry"),
    ],
)
def test_absurd_headers_are_refused(entry, body, message):
    buf = crafted({"id": "x", "fields": [entry]}, body)
    with pytest.raises(RecordError, match=message):
        decode_record(buf)


def test_compressed_block_that_inflates_past_its_size_is_refused_without_inflating_it():
    import tracemalloc

    bomb = zlib.compress(b"\0" * (64 << 20), 9)  # 64 MiB of zeros in ~64 KiB
    body = bomb + b"\0" * ((-len(bomb)) % 8)
    small = crafted({"id": "x", "fields": [["a", "<f8", [4], 0, len(bomb), "zlib"]]}, body)
    huge = crafted({"id": "x", "fields": [["a", "<f8", [1 << 27], 0, 100, "zlib"]]}, body)
    tracemalloc.start()
    try:
        with pytest.raises(RecordError, match="inflates to more than 33 bytes"):
            decode_record(small)
        with pytest.raises(RecordError, match="from a 100-byte zlib block"):
            decode_record(huge)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # never the 64 MiB the block holds, nor the 1 GiB declared
    truncated = crafted(
        {"id": "x", "fields": [["a", "<f8", [4], 0, 10, "zlib"]]},
        zlib.compress(ONE.tobytes())[:10] + b"\0" * 6,
    )
    with pytest.raises(RecordError, match="truncated stream|damaged zlib"):
        decode_record(truncated)


def test_shifts_widen_to_int32_and_never_wrap():
    assert shift_dtype(np.array([[40000 * 2, -1, 0]])) == np.int32
    assert shift_dtype(np.array([[-32769, 0, 0]])) == np.int32
    with pytest.raises(RecordError, match="do not fit in int32"):
        shift_dtype(np.array([[1 << 31, 0, 0]]))
    rec = sample_record()
    validate_graph_record(dict(rec, edge_shift=rec["edge_shift"].astype(np.int32)))


def test_validate_graph_record_requires_finite_geometry():
    rec = sample_record()
    pos = rec["pos"].copy()
    pos[1, 2] = np.nan
    with pytest.raises(RecordError, match="non-finite values in 'pos'"):
        validate_graph_record(dict(rec, pos=pos))
    dist = rec["edge_dist"].copy()
    dist[0] = np.inf
    with pytest.raises(RecordError, match="edge_dist"):
        validate_graph_record(dict(rec, edge_dist=dist))


def test_edge_vectors_are_the_image_differences_edge_by_edge():
    """schemas.record.edge_vectors against a per-edge loop in plain Python (skewed cell,
    negative and large shifts, int16 and int32 shift dtypes)."""
    from fingerprint_pretrain.schemas.record import edge_vectors

    rng = np.random.default_rng(7)
    pos = rng.normal(size=(5, 3)) * 3
    cell = np.array([[3.0, 0.0, 0.0], [1.4, 2.9, 0.0], [-0.7, 0.5, 4.1]])
    edge_index = rng.integers(0, 5, size=(2, 40))
    for dtype in (np.int16, np.int32):
        shift = rng.integers(-300, 300, size=(40, 3)).astype(dtype)
        got = edge_vectors(pos, cell, edge_index, shift)
        for e in range(40):
            j, i = edge_index[:, e]
            image = [sum(int(shift[e, k]) * cell[k, a] for k in range(3)) for a in range(3)]
            expected = [pos[j, a] + image[a] - pos[i, a] for a in range(3)]
            np.testing.assert_allclose(got[e], expected, rtol=0, atol=1e-9)
    assert got.dtype == np.float64 and got.shape == (40, 3)


# -- the shuffle codecs ------------------------------------------------------------------------
def planes(arr: np.ndarray) -> bytes:
    """The documented byte shuffle, written out: byte k of every element, k = 0 … itemsize − 1."""
    raw = np.ascontiguousarray(arr).tobytes()
    size = arr.dtype.itemsize
    return b"".join(raw[k::size] for k in range(size))


def zstd_frame(content: bytes, fcs_bytes: int = 2) -> bytes:
    """A Zstandard frame built by hand from RFC 8878 (single segment, one raw block), so the
    reader is checked against the specification rather than against an encoder."""
    assert fcs_bytes in (1, 2, 4, 8) and len(content) < 1 << 17
    flag = {1: 0, 2: 1, 4: 2, 8: 3}[fcs_bytes]
    size = len(content) - 256 if fcs_bytes == 2 else len(content)
    header = bytes([(flag << 6) | 0x20]) + size.to_bytes(fcs_bytes, "little")
    block = (1 | (0 << 1) | (len(content) << 3)).to_bytes(3, "little")  # last, raw, size
    return b"\x28\xb5\x2f\xfd" + header + block + content


def one_field(arr: np.ndarray, codec: str, block: bytes) -> bytes:
    entry = ["a", arr.dtype.str, list(arr.shape), 0, len(block), codec]
    return crafted({"id": "x", "fields": [entry]}, block + b"\0" * ((-len(block)) % 8))


@pytest.mark.parametrize("dtype", ["<f4", "<f2", "<f8", "|u1", "<i2"])
@pytest.mark.parametrize("shape", [(5, 1920), (1, 7), (0, 1920), (0,)])
def test_shuffle_codecs_are_lossless_and_read_only(dtype, shape):
    arr = (np.random.default_rng(3).normal(size=shape) * 1e3).astype(dtype)
    for codec in ("shuffle-zlib", "shuffle-zstd"):
        buf = encode_record("x", {"a": arr}, {"a": codec})
        assert buf == encode_record("x", {"a": arr}, {"a": codec})  # deterministic
        out = decode_record(buf)["a"]
        assert out.dtype == arr.dtype and out.shape == arr.shape and not out.flags.writeable
        np.testing.assert_array_equal(out, arr)
        assert descriptor_digest("a", out) == descriptor_digest("a", arr)


def test_shuffle_zlib_records_built_from_the_documented_rule_still_decode():
    """Stores written before the faster unshuffle: zlib level 1 of the byte planes."""
    arr = np.random.default_rng(4).normal(size=(9, 240)).astype(np.float32)
    out = decode_record(one_field(arr, "shuffle-zlib", zlib.compress(planes(arr), 1)))["a"]
    np.testing.assert_array_equal(out, arr)


def test_shuffle_zstd_reads_frames_built_from_the_rfc():
    arr = np.arange(300, dtype="<f4").reshape(3, 100) * 0.5
    for fcs_bytes in (2, 4, 8):
        buf = one_field(arr, "shuffle-zstd", zstd_frame(planes(arr), fcs_bytes))
        np.testing.assert_array_equal(decode_record(buf)["a"], arr)


def test_shuffle_zstd_is_plain_zstd_of_the_byte_planes():
    """Any Zstandard decoder reads the field: here the ``zstd`` command-line tool."""
    import shutil
    import subprocess

    if shutil.which("zstd") is None:
        pytest.skip("no zstd command")
    arr = np.random.default_rng(5).normal(size=(11, 1920)).astype(np.float32)
    buf = encode_record("x", {"ead": arr}, {"ead": "shuffle-zstd"})
    (hlen,) = struct.unpack("<I", buf[4:8])
    start = 8 + hlen + (-(8 + hlen)) % 8
    name, dtype, shape, offset, nbytes, codec = json.loads(buf[8 : 8 + hlen])["fields"][0]
    assert (name, dtype, shape, codec) == ("ead", "<f4", [11, 1920], "shuffle-zstd")
    block = buf[start + offset : start + offset + nbytes]
    raw = subprocess.run(["zstd", "-dc"], input=block, capture_output=True, check=True).stdout
    assert raw == planes(arr)
    assert nbytes < 0.95 * arr.nbytes  # it does compress


def test_hostile_zstd_fields_are_refused():
    arr = np.arange(100, dtype="<f4")
    good = zstd_frame(planes(arr))
    cases = [
        (zstd_frame(planes(arr[:-1])), "frame holds 396"),  # declares another size
        (good[:4] + bytes([good[4] | 0x01]) + good[5:], "no readable frame header"),  # dict
        (b"\x28\xb5\x2f\xfd\x00\x00" + good[7:], "no readable frame header"),  # no size
        (b"not a zstd frame at all", "no readable frame header"),
        (good[:-9], "damaged zstd data"),  # truncated raw block
        (good + good, "damaged zstd data"),  # a second frame: more than declared
    ]
    for block, message in cases:
        with pytest.raises(RecordError, match=message):
            decode_record(one_field(arr, "shuffle-zstd", block))
    huge = crafted({"id": "x", "fields": [["a", "<f4", [1 << 27], 0, 16, "shuffle-zstd"]]}, good)
    with pytest.raises(RecordError, match="from a 16-byte zstd block"):
        decode_record(huge)
