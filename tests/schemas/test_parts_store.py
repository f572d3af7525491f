"""Reading a store of parts (schema 2): absent label sets, malformed part entries, cut-short
parts, and single-file stores (schema 1) that still read."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest
from fingerprint_pretrain.schemas import StoreError, open_store
from fingerprint_pretrain.schemas.lmdb_store import close_env
from fingerprint_pretrain.schemas.manifest import write_json_atomic
from fingerprint_pretrain.schemas.record import decode_record

from tests.builder.helpers import MP_SAMPLE, build, read_csv, write_csv


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("parts")
    rows = read_csv(MP_SAMPLE)[:8]
    sample = write_csv(work / "eight.csv", list(rows[0]), [list(r.values()) for r in rows])
    out = work / "two.lmdb"
    build(out, sample, targets=["band_gap"], cutoff=4.0, descriptors=["wacsfset1", "wacsfset2"])
    return out


def copy_of(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / store.name
    shutil.copytree(store, copy)
    return copy


def raw_records(path: Path, prefix: bytes) -> dict[bytes, dict]:
    """Every record under ``prefix`` of an LMDB file, decoded with py-lmdb directly."""
    close_env(os.path.realpath(path))  # py-lmdb opens a file once per process
    env = lmdb.open(str(path), subdir=path.is_dir(), readonly=True, lock=False)
    with env.begin() as txn:
        out = {bytes(k): decode_record(bytes(v)) for k, v in txn.cursor() if k.startswith(prefix)}
    env.close()
    return out


def test_the_layout_is_one_file_per_part_each_listed_with_its_size_and_sha256(two_sets):
    import hashlib

    m = json.loads((two_sets / "manifest.json").read_text())
    assert m["schema_version"] == "2.0"
    assert set(m["parts"]) == {"graphs", "wacsfset1", "wacsfset2"}
    for entry in m["parts"].values():
        data = (two_sets / entry["file"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert not (two_sets / "data.mdb").exists()
    graphs = raw_records(two_sets / "graphs.mdb", b"")
    assert {k[:2] for k in graphs} == {b"g/", b"m/"} and len(graphs) == 9  # 8 records + sizes
    labels = raw_records(two_sets / "labels-wacsfset2.mdb", b"")
    assert sorted(labels) == [b"d/wacsfset2/%010d" % i for i in range(8)]


def test_a_store_with_a_label_part_deleted_opens_and_names_the_absent_set(two_sets, tmp_path):
    copy = copy_of(two_sets, tmp_path)
    (copy / "labels-wacsfset2.mdb").unlink()
    store = open_store(copy)
    assert store.descriptor_names == ["wacsfset1"] == store.descriptors
    assert store.available_descriptors == ["wacsfset1", "wacsfset2"]
    assert store.absent_descriptors == ["wacsfset2"]
    full = open_store(two_sets)
    for i in range(len(store)):
        rec, ref = store[i], full[i]
        assert sorted(rec) == sorted(k for k in ref if k != "wacsfset2")
        np.testing.assert_array_equal(rec["wacsfset1"], ref["wacsfset1"])
        np.testing.assert_array_equal(rec["pos"], ref["pos"])
    hint = rf"'wacsfset2' is not present here .*`fp-build add {copy} --descriptor wacsfset2`"
    with pytest.raises(StoreError, match=hint):
        store.get(0, descriptors=["wacsfset2"])
    with pytest.raises(StoreError, match=hint):
        open_store(copy, descriptors=["wacsfset2"])
    # fetched from somewhere: the hint is the fetch of that set
    (copy / "origin.json").write_text(json.dumps({"url": "https://example.org/s", "parts": {}}))
    with pytest.raises(StoreError, match=r"`fp-build fetch https://example.org/s --labels wacsf"):
        open_store(copy).get(3, descriptors=["wacsfset2"])


def test_a_cut_short_label_part_is_refused_not_taken_for_absent(two_sets, tmp_path):
    copy = copy_of(two_sets, tmp_path)
    part = copy / "labels-wacsfset1.mdb"
    part.write_bytes(part.read_bytes()[:5000])
    with pytest.raises(StoreError, match=r"labels-wacsfset1.mdb is truncated \(5,000 bytes"):
        open_store(copy)
    store = open_store(copy, descriptors=["wacsfset2"])  # the other sets still read
    assert store[0]["wacsfset2"].shape[1] == 20
    with pytest.raises(StoreError, match="labels-wacsfset1.mdb is truncated"):
        store.get(0, descriptors=["wacsfset1"])


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda p: p["wacsfset1"].update(file="../x"), "names file '../x'"),
        (lambda p: p["wacsfset1"].update(file="/etc/passwd"), "names file '/etc/passwd'"),
        (lambda p: p["graphs"].update(file="labels-wacsfset1.mdb"), "not the plain name"),
        (lambda p: p["wacsfset1"].update(bytes=-1), "bytes must be a non-negative integer"),
        (lambda p: p["wacsfset1"].update(bytes="12"), "bytes must be a non-negative integer"),
        (lambda p: p["graphs"].update(sha256="zz" * 32), "sha256 must be 64 hex digits"),
        (lambda p: p.pop("wacsfset2"), r"missing \['wacsfset2'\]"),
        (lambda p: p.update(extra=dict(p["graphs"])), r"parts \['extra'\] are not label sets"),
    ],
)
def test_a_manifest_with_a_malformed_part_entry_is_refused(two_sets, tmp_path, edit, why):
    copy = copy_of(two_sets, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest["parts"])
    write_json_atomic(copy / "manifest.json", manifest)  # sealed: parts are outside the digest
    with pytest.raises(StoreError, match=rf"manifest.json: malformed manifest \(parts: .*{why}"):
        open_store(copy)


def test_a_manifest_of_schema_2_without_parts_is_refused(two_sets, tmp_path):
    copy = copy_of(two_sets, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["parts"]
    write_json_atomic(copy / "manifest.json", manifest)
    with pytest.raises(StoreError, match=r"malformed manifest \(parts: must be an object"):
        open_store(copy)


def single_file_copy(store: Path, out: Path) -> Path:
    """The same store as a single-file store (schema 1): every part's keys merged into one
    ``data.mdb`` with py-lmdb, the manifest without parts."""
    out.mkdir()
    manifest = json.loads((store / "manifest.json").read_text())
    close_env(os.path.realpath(store))  # py-lmdb opens a file once per process
    env = lmdb.open(str(out), subdir=True, map_size=1 << 28)
    with env.begin(write=True) as txn:
        for entry in manifest.pop("parts").values():
            src = lmdb.open(str(store / entry["file"]), subdir=False, readonly=True, lock=False)
            with src.begin() as read:
                for key, value in read.cursor():
                    txn.put(bytes(key), bytes(value))
            src.close()
    env.close()
    (out / "lock.mdb").unlink()
    manifest["schema_version"] = "1.0"
    write_json_atomic(out / "manifest.json", manifest)
    return out


def test_a_single_file_store_still_reads(two_sets, tmp_path):
    legacy = single_file_copy(two_sets, tmp_path / "legacy.lmdb")
    old, new = open_store(legacy), open_store(two_sets)
    assert old.legacy and not new.legacy
    assert old.descriptor_names == new.descriptor_names == ["wacsfset1", "wacsfset2"]
    np.testing.assert_array_equal(old.num_atoms(), new.num_atoms())
    for a, b in zip(old, new):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert old.content_hash == new.content_hash
