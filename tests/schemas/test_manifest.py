"""Manifest reading and the schema-version gate."""

from __future__ import annotations

import json

import pytest

from schemas import SCHEMA_VERSION, SchemaVersionError, StoreError, open_store, read_manifest
from schemas.manifest import combine_content_hash, write_json_atomic


def write(tmp_path, **overrides):
    manifest = {
        "format": "fingerprint-pretrain-store",
        "schema_version": SCHEMA_VERSION,
        "backend": "lmdb",
        "counts": {"records": 0},
    }
    manifest.update(overrides)
    write_json_atomic(tmp_path / "manifest.json", manifest)
    return manifest


def test_unknown_major_version_is_refused_naming_both(tmp_path):
    write(tmp_path, schema_version="2.3")
    with pytest.raises(SchemaVersionError) as err:
        read_manifest(tmp_path)
    message = str(err.value)
    assert "2.3" in message and f"reads schema {SCHEMA_VERSION.split('.')[0]}.x" in message


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
