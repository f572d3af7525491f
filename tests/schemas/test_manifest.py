"""Manifest reading and the schema-version gate."""

from __future__ import annotations

import json

import pytest
from fingerprint_pretrain.schemas import (
    SCHEMA_VERSION,
    SchemaVersionError,
    StoreError,
    open_store,
    read_manifest,
)
from fingerprint_pretrain.schemas.manifest import (
    combine_content_hash,
    manifest_digest,
    write_json_atomic,
)


def write(tmp_path, **overrides):
    manifest = {
        "format": "fingerprint-pretrain-store",
        "schema_version": SCHEMA_VERSION,
        "backend": "lmdb",
        "counts": {"records": 0},
        "parts": {"graphs": {"file": "graphs.mdb", "bytes": 0, "sha256": "0" * 64}},
    }
    manifest.update(overrides)
    for name in manifest.get("descriptors", {}):
        manifest["parts"][name] = {"file": f"labels-{name}.mdb", "bytes": 0, "sha256": "0" * 64}
    write_json_atomic(tmp_path / "manifest.json", manifest)
    return manifest


def test_unknown_major_version_is_refused_naming_both(tmp_path):
    write(tmp_path, schema_version="3.3")
    with pytest.raises(SchemaVersionError) as err:
        read_manifest(tmp_path)
    message = str(err.value)
    assert "3.3" in message and "reads schema 1.x or 2.x" in message


def test_newer_minor_version_is_read(tmp_path):
    write(tmp_path, schema_version="1.7")
    assert read_manifest(tmp_path)["schema_version"] == "1.7"


def test_missing_or_broken_manifest(tmp_path):
    with pytest.raises(StoreError, match="not a finished store"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": ')
    with pytest.raises(StoreError, match="invalid JSON at line 1"):
        read_manifest(tmp_path)
    with pytest.raises(StoreError, match="no such store"):
        open_store(tmp_path / "nope.lmdb")


def test_manifest_is_plain_json_readable_without_lmdb(tmp_path):
    write(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["backend"] == "lmdb"


def test_content_hash_depends_on_graphs_and_every_set():
    base = combine_content_hash("sha256:aa", {})
    assert base != combine_content_hash("sha256:ab", {})
    with_set = combine_content_hash("sha256:aa", {"eadset1": "sha256:01"})
    assert with_set != base
    assert with_set != combine_content_hash("sha256:aa", {"eadset1": "sha256:02"})
    # order of sets does not matter
    assert combine_content_hash("sha256:aa", {"a": "1", "b": "2"}) == combine_content_hash(
        "sha256:aa", {"b": "2", "a": "1"}
    )


def test_written_manifests_carry_a_digest_of_what_the_records_mean(tmp_path):
    write(tmp_path, cutoff=8.0, targets=[{"name": "band_gap", "unit": "eV"}])
    stored = json.loads((tmp_path / "manifest.json").read_text())
    assert stored["manifest_digest"] == manifest_digest(stored)
    assert read_manifest(tmp_path)["targets"][0]["name"] == "band_gap"


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["targets"][0].update(name="formation_energy"),
        lambda m: m.update(cutoff=6.0),
        lambda m: m["descriptors"]["wacsfset1"].update(dim=20),
        lambda m: m["descriptors"]["wacsfset1"]["stats"]["mean"].__setitem__(0, 0.5),
        lambda m: m["counts"].update(records=1),
        lambda m: m.update(descriptors={}),
    ],
)
def test_an_edited_manifest_is_refused(tmp_path, edit):
    write(
        tmp_path,
        cutoff=8.0,
        targets=[{"name": "band_gap", "unit": "eV"}],
        descriptors={"wacsfset1": {"dim": 48, "stats": {"mean": [0.25] * 48}}},
    )
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="manifest.json: edited after the store was written"):
        read_manifest(tmp_path)


def test_fields_outside_the_digest_and_old_manifests_read(tmp_path):
    write(tmp_path, created="2026-01-01T00:00:00+00:00")
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["created"] = "2027-01-01T00:00:00+00:00"  # when, not what: not covered
    path.write_text(json.dumps(manifest))
    read_manifest(tmp_path)
    del manifest["manifest_digest"]  # written before digests existed
    path.write_text(json.dumps(manifest))
    assert "manifest_digest" not in read_manifest(tmp_path)


def test_a_damaged_manifest_is_a_store_error(tmp_path):
    write(tmp_path)
    path = tmp_path / "manifest.json"
    text = path.read_bytes()
    path.write_bytes(text.replace(b"lmdb", b"lm\xbcb"))  # not UTF-8 any more
    with pytest.raises(StoreError, match=r"manifest.json: not UTF-8 text"):
        read_manifest(tmp_path)
    for bad in ('{"counts": {"records": "6"}}', '{"counts": []}', '{"targets": [3]}'):
        manifest = json.loads(text)
        del manifest["manifest_digest"]
        manifest.update(json.loads(bad))
        path.write_text(json.dumps(manifest))
        with pytest.raises(StoreError, match="malformed manifest"):
            read_manifest(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(StoreError, match="not a fingerprint-pretrain-store manifest"):
        read_manifest(tmp_path)
