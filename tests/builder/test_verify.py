"""``fp-build verify`` checks more than the hashes: the manifest (digest, counts, label
statistics, dims), every record against the record contract, and says when a store predates
checksums."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest
from fingerprint_pretrain.builder.info import verify_store
from fingerprint_pretrain.builder.parts import file_sha256
from fingerprint_pretrain.schemas import open_store
from fingerprint_pretrain.schemas.lmdb_store import graph_key
from fingerprint_pretrain.schemas.manifest import write_json_atomic
from fingerprint_pretrain.schemas.record import decode_record, encode_record
from fingerprint_pretrain.schemas.store import compute_hashes

from tests.builder.helpers import MP_SAMPLE, build, read_csv, write_csv


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("verify")
    rows = read_csv(MP_SAMPLE)[:5]
    sample = write_csv(work / "five.csv", list(rows[0]), [list(r.values()) for r in rows])
    out = work / "five.lmdb"
    build(out, sample, targets=["band_gap"], cutoff=4.0, descriptors=["gmpset1"])
    return out


def copy_of(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / store.name
    shutil.copytree(store, copy)
    return copy


def rewrite_values(store: Path, change) -> None:
    """Replace every value of every part file by ``change(key, value)`` (None keeps it); the
    manifest's part sizes and sha256 follow (so only the record checks can tell)."""
    manifest = json.loads((store / "manifest.json").read_text())
    for entry in manifest["parts"].values():
        path = store / entry["file"]
        env = lmdb.open(str(path), subdir=False, max_dbs=0)
        with env.begin(write=True) as txn:
            for key, value in list(txn.cursor()):
                new = change(bytes(key), bytes(value))
                if new is not None:
                    txn.put(key, new)
        env.close()
        path.with_name(path.name + "-lock").unlink(missing_ok=True)
        entry.update(bytes=path.stat().st_size, sha256=file_sha256(path))
    write_json_atomic(store / "manifest.json", manifest)


def reseal(store: Path, edit) -> None:
    """Edit the manifest the way a writer would (its digest recomputed)."""
    manifest = json.loads((store / "manifest.json").read_text())
    edit(manifest)
    write_json_atomic(store / "manifest.json", manifest)


def test_intact_store_verifies(store):
    ok, lines = verify_store(store, progress=False)
    assert ok and lines[-1].startswith(f"{store}: OK") and len(lines) == 1


def test_edited_target_name_is_found(store, tmp_path):
    copy = copy_of(store, tmp_path)
    path = copy / "manifest.json"
    path.write_text(path.read_text().replace('"band_gap"', '"formation_energy_per_atom"'))
    ok, lines = verify_store(copy, progress=False)
    assert not ok and "edited after the store was written" in lines[-1]


def test_a_record_breaking_the_contract_is_found_even_with_matching_hashes(store, tmp_path):
    """A non-finite position, with the manifest's hashes made to match it: the hashes alone
    would call the store OK."""
    copy = copy_of(store, tmp_path)

    def poison(key: bytes, value: bytes) -> bytes | None:
        if key != graph_key(3):
            return None
        rec = decode_record(value)
        pos = rec["pos"].copy()
        pos[0, 0] = np.nan
        return encode_record(rec["id"], {**{k: v for k, v in rec.items() if k != "id"}, "pos": pos})

    rewrite_values(copy, poison)
    hashes = compute_hashes(open_store(copy))
    reseal(copy, lambda m: m.update(graphs_hash=hashes["graphs_hash"]))
    reseal(copy, lambda m: m.update(content_hash=hashes["content_hash"]))
    ok, lines = verify_store(copy, progress=False)
    assert not ok
    assert "record 3" in lines[-1] and "non-finite values in 'pos'" in lines[-1]


def test_statistics_and_dims_are_checked_against_the_records(store, tmp_path):
    copy = copy_of(store, tmp_path)
    reseal(copy, lambda m: m["descriptors"]["gmpset1"]["stats"]["mean"].__setitem__(2, 123.0))
    ok, lines = verify_store(copy, progress=False)
    assert not ok and "gmpset1: manifest stats.mean differs" in "\n".join(lines)
    reseal(copy, lambda m: m["descriptors"]["gmpset1"].update(dim=12))
    ok, lines = verify_store(copy, progress=False)
    assert not ok and "gmpset1 is float32 (" in lines[-1] and "the manifest says" in lines[-1]


def legacy(value: bytes) -> bytes:
    """The same record as written before checksums: header without "crc32"."""
    rec = decode_record(value)
    buf = encode_record(rec["id"], {k: v for k, v in rec.items() if k != "id"})
    hlen = int.from_bytes(buf[4:8], "little")
    header = json.loads(buf[8 : 8 + hlen])
    text = json.dumps({"id": header["id"], "fields": header["fields"]}, separators=(",", ":"))
    head = b"FPR1" + len(text).to_bytes(4, "little") + text.encode()
    start = 8 + hlen + (-(8 + hlen)) % 8
    return head + b"\0" * ((-len(head)) % 8) + buf[start:]


def test_a_store_from_before_checksums_reads_and_verifies_with_a_note(store, tmp_path):
    copy = copy_of(store, tmp_path)
    rewrite_values(copy, lambda key, value: legacy(value) if key[:2] in (b"g/", b"d/") else None)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["manifest_digest"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    old, new = open_store(copy), open_store(store)
    for a, b in zip(old, new):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    ok, lines = verify_store(copy, progress=False)
    assert ok, lines
    text = "\n".join(lines)
    assert "the manifest predates manifest digests" in text
    assert "10 record blobs predate record checksums" in text
