"""``fp-build pack`` and ``fp-build fetch URL`` against a local HTTP server started by the test
(no internet): a whole store, a part whose transfer is cut half-way (resumed), a corrupted part,
a manifest whose sha256 does not match the served part, a manifest naming ``../x``, one label
set only (bytes counted by the server), adding a set later, and a registry entry whose source
points at a published store. References are independent of the code under test: ``sha256sum
-c`` for SHA256SUMS, the server's own byte count, the original store's files and records."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fingerprint_pretrain.builder.cli import main
from fingerprint_pretrain.builder.datasets import registry
from fingerprint_pretrain.builder.datasets.download import ChecksumError, DownloadError
from fingerprint_pretrain.builder.datasets.make import MakeOptions, fetch_dataset
from fingerprint_pretrain.builder.info import verify_store
from fingerprint_pretrain.builder.publish import fetch_store, pack_store
from fingerprint_pretrain.schemas import StoreError, open_store

from tests.builder.helpers import MP_SAMPLE, MP_TARGETS, build

SETS = ["wacsfset1", "gmpset1"]


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """A real store of parts: the mp sample with two label sets."""
    out = tmp_path_factory.mktemp("orig") / "mp.lmdb"
    build(out, MP_SAMPLE, targets=MP_TARGETS, descriptors=SETS)
    return out


@pytest.fixture(scope="module")
def packed(original, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "mp"
    pack_store(original, out, log=lambda line: None)
    return out


def quiet(**kw) -> dict:
    return {"progress": False, "backoff": 0.0, "retries": 3, "log": lambda line: None, **kw}


def records(path: Path, sets: list[str]) -> list[dict]:
    store = open_store(path, descriptors=sets)
    return [store[i] for i in range(len(store))]


def assert_same_records(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key in ra:
            np.testing.assert_array_equal(ra[key], rb[key])


# -------------------------------------------------------------------------------------- pack
def test_pack_writes_manifest_parts_and_checksums(original, packed):
    manifest = json.loads((original / "manifest.json").read_text())
    files = [e["file"] for e in manifest["parts"].values()]
    assert sorted(p.name for p in packed.iterdir()) == sorted(
        [*files, "manifest.json", "SHA256SUMS", "README.txt"]
    )
    assert (packed / "manifest.json").read_bytes() == (original / "manifest.json").read_bytes()
    for name in files:
        assert (packed / name).read_bytes() == (original / name).read_bytes()
        assert (packed / name).stat().st_ino == (original / name).stat().st_ino  # hard link
    check = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=packed, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert sorted(re.findall(r"^(\S+): OK$", check.stdout, re.M)) == sorted(
        [*files, "manifest.json"]
    )
    assert "fp-build fetch URL --labels" in (packed / "README.txt").read_text()


def test_pack_copies_across_file_systems(original, tmp_path, monkeypatch):
    import fingerprint_pretrain.builder.publish as publish

    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(publish.os, "link", no_link)
    result = pack_store(original, tmp_path / "copy", log=lambda line: None)
    assert result.linked == 0
    for name in ["graphs.mdb", "labels-gmpset1.mdb"]:
        assert (tmp_path / "copy" / name).read_bytes() == (original / name).read_bytes()
        assert (tmp_path / "copy" / name).stat().st_ino != (original / name).stat().st_ino
    assert not list((tmp_path / "copy").glob("*.tmp"))


def test_pack_refuses_damaged_or_absent_part(original, tmp_path):
    store = tmp_path / "s.lmdb"
    shutil.copytree(original, store)
    part = store / "labels-gmpset1.mdb"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    part.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"labels-gmpset1.mdb: part 'gmpset1' has sha256"):
        pack_store(store, tmp_path / "out1", log=lambda line: None)
    assert not (tmp_path / "out1" / "manifest.json").exists()
    part.unlink()
    with pytest.raises(StoreError, match=r"part 'gmpset1' is absent"):
        pack_store(store, tmp_path / "out2", log=lambda line: None)
    assert not (tmp_path / "out2").exists()


def test_pack_refuses_a_non_empty_folder_without_overwrite(original, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.txt").write_text("x")
    assert main(["pack", str(original), "--out", str(out)]) == 1
    assert main(["pack", str(original), "--out", str(out), "--overwrite"]) == 0
    assert (out / "manifest.json").read_bytes() == (original / "manifest.json").read_bytes()


# -------------------------------------------------------------------------------------- fetch
def test_fetch_whole_store(original, packed, server, tmp_path):
    url = server.serve_dir(packed)
    result = fetch_store(url, store=tmp_path / "got.lmdb", **quiet())
    got = tmp_path / "got.lmdb"
    assert set(result.fetched) == {"graphs", *SETS} and result.absent == []
    assert (got / "manifest.json").read_bytes() == (original / "manifest.json").read_bytes()
    assert json.loads((got / "origin.json").read_text())["url"] == url
    assert not got.with_name("got.lmdb.download").exists()
    assert_same_records(records(got, SETS), records(original, SETS))
    ok, lines = verify_store(got, progress=False)
    assert ok, lines


def test_fetch_resumes_a_part_cut_half_way(original, packed, server, tmp_path):
    url = server.serve_dir(packed)
    size = (packed / "graphs.mdb").stat().st_size
    server.drop["/pub/graphs.mdb"] = size // 2
    fetch_store(url, store=tmp_path / "got.lmdb", labels=[], **quiet())
    got = [r for p, r in server.requests if p == "/pub/graphs.mdb"]
    assert got == [None, f"bytes={size // 2}-"]  # the second request resumes at the cut
    assert server.sent["/pub/graphs.mdb"] == size  # nothing sent twice
    assert (tmp_path / "got.lmdb" / "graphs.mdb").read_bytes() == (
        original / "graphs.mdb"
    ).read_bytes()


def test_fetch_refuses_a_corrupted_part(packed, server, tmp_path):
    url = server.serve_dir(packed)
    data = bytearray(server.files["/pub/labels-gmpset1.mdb"])
    data[100] ^= 0x01
    server.files["/pub/labels-gmpset1.mdb"] = bytes(data)
    store = tmp_path / "got.lmdb"
    with pytest.raises(ChecksumError) as err:
        fetch_store(url, store=store, **quiet())
    message = str(err.value)
    assert "\n" not in message and "part 'gmpset1'" in message
    assert "labels-gmpset1.mdb" in message and "expected sha256" in message
    assert not (store / "labels-gmpset1.mdb").exists()
    assert not (store / "manifest.json").exists()  # not a store: nothing reads it
    # the CLI: one line on stderr, exit 1
    rc = main(["fetch", url, "--store", str(tmp_path / "cli.lmdb"), "--no-verify", "-q"])
    assert rc == 1 and not (tmp_path / "cli.lmdb" / "labels-gmpset1.mdb").exists()


def test_manifest_whose_sha256_does_not_match_the_served_part(packed, server, tmp_path):
    url = server.serve_dir(packed)
    manifest = json.loads(server.files["/pub/manifest.json"])
    manifest["parts"]["wacsfset1"]["sha256"] = hashlib.sha256(b"something else").hexdigest()
    server.files["/pub/manifest.json"] = json.dumps(manifest).encode()  # parts: outside digest
    store = tmp_path / "got.lmdb"
    with pytest.raises(ChecksumError, match=r"part 'wacsfset1'"):
        fetch_store(url, store=store, labels=["wacsfset1"], **quiet())
    assert not (store / "labels-wacsfset1.mdb").exists()
    assert not (store / "manifest.json").exists()


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda p: p["graphs"].update(file="../graphs.mdb"), r"not the plain name|is not"),
        (lambda p: p["gmpset1"].update(bytes=-1), r"bytes"),
        (lambda p: p["gmpset1"].update(sha256="00"), r"sha256"),
        (lambda p: p.pop("wacsfset1"), r"parts"),
    ],
)
def test_malformed_manifest_is_refused_before_any_part(packed, server, tmp_path, edit, match):
    url = server.serve_dir(packed)
    manifest = json.loads(server.files["/pub/manifest.json"])
    edit(manifest["parts"])
    server.files["/pub/manifest.json"] = json.dumps(manifest).encode()
    with pytest.raises(StoreError, match=match):
        fetch_store(url, store=tmp_path / "got.lmdb", **quiet())
    assert [p for p, _ in server.requests] == ["/pub/manifest.json"]
    assert not (tmp_path / "got.lmdb").exists() and not (tmp_path / "graphs.mdb").exists()


def test_oversized_manifest_is_refused(packed, server, tmp_path, monkeypatch):
    import fingerprint_pretrain.builder.publish as publish

    url = server.serve_dir(packed)
    monkeypatch.setattr(publish, "MAX_MANIFEST_BYTES", 1000)
    with pytest.raises(DownloadError, match="larger than 1,000 bytes"):
        fetch_store(url, store=tmp_path / "got.lmdb", **quiet())


def test_one_label_set_then_another(original, packed, server, tmp_path):
    url = server.serve_dir(packed)
    store = tmp_path / "got.lmdb"
    size = {p.name: p.stat().st_size for p in packed.iterdir()}
    result = fetch_store(url, store=store, labels=["gmpset1"], **quiet())
    assert server.total() == size["manifest.json"] + size["graphs.mdb"] + size["labels-gmpset1.mdb"]
    assert result.absent == ["wacsfset1"] and not (store / "labels-wacsfset1.mdb").exists()
    s = open_store(store)
    assert s.descriptors == ["gmpset1"]
    assert set(s.available_descriptors) == set(SETS)
    with pytest.raises(StoreError, match=r"wacsfset1.*fp-build fetch"):
        open_store(store, descriptors=["wacsfset1"])
    assert_same_records(records(store, ["gmpset1"]), records(original, ["gmpset1"]))
    assert main(["verify", str(store), "-q"]) == 0
    # again with the other set: only its part (and the manifest) travel
    server.sent.clear()
    rc = main(["fetch", url, "--store", str(store), "--labels", "wacsfset1", "--no-verify", "-q"])
    assert rc == 0
    assert server.sent == {
        "/pub/manifest.json": size["manifest.json"],
        "/pub/labels-wacsfset1.mdb": size["labels-wacsfset1.mdb"],
    }
    assert_same_records(records(store, SETS), records(original, SETS))
    origin = json.loads((store / "origin.json").read_text())
    assert set(origin["parts"]) == {"graphs", *SETS}


def test_local_folder_and_default_store_name(original, packed, tmp_path):
    rc = main(["fetch", str(packed), "--out", str(tmp_path / "stores"), "--labels", "none", "-q"])
    assert rc == 0
    store = tmp_path / "stores" / "mp.lmdb"
    assert sorted(p.name for p in store.iterdir()) == ["graphs.mdb", "manifest.json", "origin.json"]
    assert_same_records(records(store, []), records(original, []))


# ---------------------------------------------------------------- registry: Source.prebuilt
def _entry(url: str) -> registry.Dataset:
    source = registry.Source(
        name="sample",
        kind="local",
        files=(registry.RemoteFile(MP_SAMPLE.name),),
        fmt="csv-cif",
        store="prebuilt_sample",
        targets=tuple(MP_TARGETS),
        id_column="material_id",
        prebuilt=url,
    )
    return registry.Dataset(
        name="prebuilt_test",
        role="task",
        title="test entry",
        prop="band gap (eV)",
        size=40,
        structure="cif",
        splits=("random",),
        citation="-",
        licence="-",
        sources=(source,),
        target={"sample": "band_gap"},
    )


def test_registry_entry_fetches_its_published_store(
    original, packed, server, tmp_path, monkeypatch
):
    url = server.serve_dir(packed)
    monkeypatch.setitem(registry.DATASETS, "prebuilt_test", _entry(url))
    opts = MakeOptions(out=tmp_path / "stores", cache=tmp_path / "cache", **quiet())
    row = fetch_dataset("prebuilt_test", opts)
    store = tmp_path / "stores" / "prebuilt_sample.lmdb"
    assert row["status"] == "fetched" and row["records"] == len(open_store(original))
    assert_same_records(records(store, SETS), records(original, SETS))
    side = json.loads((tmp_path / "stores" / "prebuilt_sample.dataset.json").read_text())
    assert side["prebuilt"]["url"] == url and side["build_seconds"] is None
    split = np.load(tmp_path / "stores" / "prebuilt_sample.splits" / "seed111.npz")
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == row["records"]
    assert fetch_dataset("prebuilt_test", opts)["status"] == "up to date"


def test_registry_entry_whose_published_store_fails(server, tmp_path, monkeypatch):
    monkeypatch.setitem(registry.DATASETS, "prebuilt_test", _entry(server.url("/none/")))
    opts = MakeOptions(
        out=tmp_path / "stores",
        cache=tmp_path / "cache",
        from_dirs=[MP_SAMPLE.parent],
        descriptors=[],
        **quiet(),
    )
    with pytest.raises(DownloadError, match=r"prebuilt_test: the published store .* HTTP 404"):
        fetch_dataset("prebuilt_test", opts)
    assert not (tmp_path / "stores" / "prebuilt_sample.lmdb").exists()
    opts.build_on_fail = True  # the user allows a build from the raw data
    row = fetch_dataset("prebuilt_test", opts)
    assert row["status"] == "built"
    assert "prebuilt" not in json.loads(
        (tmp_path / "stores" / "prebuilt_sample.dataset.json").read_text()
    )


def test_urls_of_parts_and_default_names():
    from fingerprint_pretrain.builder.publish import base_url, file_url, store_name

    base = base_url("https://zenodo.org/records/7/files/manifest.json?download=1")
    assert base == "https://zenodo.org/records/7/files/?download=1"
    assert (
        file_url(base, "graphs.mdb") == "https://zenodo.org/records/7/files/graphs.mdb?download=1"
    )
    assert store_name(base_url("http://host/stores/jdft2d.lmdb")) == "jdft2d.lmdb"
    assert store_name("http://host/stores/jdft2d/") == "jdft2d.lmdb"
