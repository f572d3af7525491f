"""The FPR1 record encoding: lossless, deterministic, pickle-free, readable without our code."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from schemas.record import (
    RecordError,
    decode_record,
    descriptor_digest,
    encode_record,
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
