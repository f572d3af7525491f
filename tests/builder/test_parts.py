"""Stores of parts on the builder side: ``fp-build convert`` of a single-file store written by
the code before parts, ``fp-build add`` writing a new part while another process reads the
store, ``verify`` of part checksums, a build killed just before it is put in place, and the
Zarr twin of a store lacking a set."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import numpy as np
import pytest
from fingerprint_pretrain.builder.add import add_descriptors
from fingerprint_pretrain.builder.errors import BuildError
from fingerprint_pretrain.builder.info import verify_store
from fingerprint_pretrain.builder.parts import convert
from fingerprint_pretrain.schemas import open_store
from fingerprint_pretrain.schemas.lmdb_store import close_env
from fingerprint_pretrain.schemas.record import decode_record
from fingerprint_pretrain.schemas.store import compute_hashes

from tests.builder.helpers import MP_SAMPLE, build, read_csv, write_csv
from tests.conftest import REPO

#: the last revision whose builder wrote single-file stores (schema 1.0, one data.mdb)
SINGLE_FILE_REV = "28d4264"

# the old revision's code, under the bare import names it had then (PYTHONPATH = its archive)
OLD_BUILD = """
import sys
from builder.build import BuildOptions, build_store
build_store(BuildOptions(inputs=[sys.argv[1]], out=sys.argv[2], targets=["band_gap"],
    cutoff=4.0, descriptors=["wacsfset1"], jobs=1, progress=False, stop_after_chunks=None))
"""

OLD_ADD_STOPPED = """
import sys
from builder.add import add_descriptors
add_descriptors(sys.argv[1], ["wacsfset2"], jobs=1, chunk_size=2, progress=False,
    stop_after_chunks=1)
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("parts-sample")
    rows = read_csv(MP_SAMPLE)[:8]
    return write_csv(work / "eight.csv", list(rows[0]), [list(r.values()) for r in rows])


@pytest.fixture(scope="module")
def single_file(tmp_path_factory, sample) -> Path:
    """A single-file store written by the builder of :data:`SINGLE_FILE_REV` (its code taken
    with ``git archive``), with an interrupted ``add`` of a second set left inside."""
    work = tmp_path_factory.mktemp("single-file")
    code = work / "old"
    code.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", SINGLE_FILE_REV, "builder", "schemas"],
        capture_output=True,
    )
    if archive.returncode != 0:
        pytest.skip(f"revision {SINGLE_FILE_REV} not in this clone")
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = work / "old.lmdb"
    for script, args in ((OLD_BUILD, [sample, out]), (OLD_ADD_STOPPED, [out])):
        subprocess.run(
            [sys.executable, "-c", script, *map(str, args)], env=env, check=True, cwd=work
        )
    assert (out / "data.mdb").is_file() and not (out / "graphs.mdb").exists()
    return out


def legacy_records(store: Path) -> dict[bytes, dict]:
    """Every graph and label record of a single-file store, decoded from its data.mdb with
    py-lmdb directly (the reference a conversion is compared with)."""
    close_env(os.path.realpath(store))
    env = lmdb.open(str(store), subdir=True, readonly=True, lock=False)
    with env.begin() as txn:
        records = [(bytes(k), bytes(v)) for k, v in txn.cursor() if k[:2] in (b"g/", b"d/")]
    out = {key: decode_record(value) for key, value in records}
    env.close()
    return out


def copy_of(store: Path, tmp_path: Path, name: str | None = None) -> Path:
    copy = tmp_path / (name or store.name)
    shutil.copytree(store, copy)
    return copy


def test_convert_gives_the_records_of_the_single_file_store(single_file, tmp_path):
    store = copy_of(single_file, tmp_path)
    before = json.loads((store / "manifest.json").read_text())
    reference = legacy_records(store)
    assert any(k.startswith(b"d/wacsfset2/") for k in reference)  # the interrupted add's
    manifest, converted = convert(store)
    assert converted and manifest["schema_version"] == "2.0"
    assert sorted(p.name for p in store.iterdir()) == [
        "graphs.mdb",
        "labels-wacsfset1.mdb",
        "manifest.json",
        "rejected.csv",
    ]
    s = open_store(store)
    assert s.descriptor_names == ["wacsfset1"]  # the unlisted half set is not carried over
    assert len(s) == 8 and s.content_hash == before["content_hash"]
    assert (
        json.loads((store / "manifest.json").read_text())["manifest_digest"]
        == before["manifest_digest"]
    )
    for i in range(len(s)):
        rec = s[i]
        ref = reference[b"g/%010d" % i]
        assert rec["id"] == ref["id"]
        for key in ("z", "pos", "cell", "pbc", "edge_index", "edge_shift", "edge_dist"):
            np.testing.assert_array_equal(rec[key], ref[key])
        np.testing.assert_array_equal(
            rec["wacsfset1"], reference[b"d/wacsfset1/%010d" % i]["wacsfset1"]
        )
    ok, lines = verify_store(store, progress=False)
    assert ok and "2 parts match their size and sha256" in lines[-1], lines
    assert convert(store) == (manifest, False)  # a second run: nothing to do


def test_a_killed_convert_leaves_the_old_store_intact_and_a_rerun_finishes(single_file, tmp_path):
    store = copy_of(single_file, tmp_path)
    reference = legacy_records(store)
    convert(store, stop_after_parts=True)  # killed before the manifest swap
    (store / ".labels-wacsfset1.mdb.tmp").write_bytes(b"half a part")  # killed mid-part
    s = open_store(store)
    assert s.legacy and len(s) == 8  # still the single-file store, reading data.mdb
    np.testing.assert_array_equal(s[5]["pos"], reference[b"g/0000000005"]["pos"])
    _, converted = convert(store)
    assert converted and not (store / "data.mdb").exists()
    assert not list(store.glob(".*"))
    np.testing.assert_array_equal(open_store(store)[5]["pos"], reference[b"g/0000000005"]["pos"])
    # killed after the swap, before data.mdb was removed: a rerun removes it
    shutil.copyfile(single_file / "data.mdb", store / "data.mdb")
    assert convert(store)[1] is False and not (store / "data.mdb").exists()


def test_add_on_a_single_file_store_is_refused_naming_convert(single_file, tmp_path):
    from tests.builder.test_cli import fp_build, one_line_error

    store = copy_of(single_file, tmp_path)
    data = sha256(store / "data.mdb")
    line = one_line_error(fp_build("add", store, "-d", "wacsfset2", "-q"), 1)
    assert "single-file store (schema 1.0), read-only" in line
    assert f"`fp-build convert {store}`" in line
    assert sha256(store / "data.mdb") == data
    result = fp_build("convert", store, check=True)
    assert "converted to parts (graphs.mdb, labels-wacsfset1.mdb)" in result.stdout


READER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import numpy as np
    from fingerprint_pretrain.schemas import open_store
    store, stop = sys.argv[1], Path(sys.argv[2])
    s = open_store(store, descriptors=["wacsfset1"])
    reference = [s[i] for i in range(len(s))]
    print("ready", flush=True)
    rng = np.random.default_rng(0)
    reads = wrong = 0
    errors = []
    while not stop.exists():
        for i in rng.permutation(len(s)):  # a training epoch's order
            try:
                rec = s[int(i)]
            except Exception as err:
                errors.append(f"{type(err).__name__}: {err}")
                continue
            reads += 1
            ref = reference[i]
            if rec["id"] != ref["id"] or not all(
                np.array_equal(rec[k], ref[k]) for k in ref if k != "id"
            ):
                wrong += 1
    print(json.dumps({"reads": reads, "wrong": wrong, "errors": errors[:3]}), flush=True)
    """
)


def test_add_writes_a_new_part_while_another_process_reads_correct_records(sample, tmp_path):
    store = tmp_path / "s.lmdb"
    build(store, sample, targets=["band_gap"], cutoff=4.0, descriptors=["wacsfset1"])
    before = {name: sha256(store / name) for name in ("graphs.mdb", "labels-wacsfset1.mdb")}
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(store), str(stop)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "ready"
        add_descriptors(store, ["wacsfset2"], jobs=1, chunk_size=1, progress=False)
        stop.touch()
        out, err = reader.communicate(timeout=120)
    finally:
        reader.kill()
    assert reader.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["reads"] > 0 and result["wrong"] == 0 and not result["errors"], result
    # no file the reader had open was written; the set is a new part, listed with its checksum
    assert {name: sha256(store / name) for name in before} == before
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["parts"]["wacsfset2"] == {
        "file": "labels-wacsfset2.mdb",
        "bytes": (store / "labels-wacsfset2.mdb").stat().st_size,
        "sha256": sha256(store / "labels-wacsfset2.mdb"),
    }
    assert not list(store.glob(".*"))  # the working environment is gone
    s = open_store(store)
    assert s.descriptor_names == ["wacsfset1", "wacsfset2"]
    assert compute_hashes(s)["content_hash"] == s.content_hash


def test_add_brings_back_an_absent_set(sample, tmp_path):
    store = tmp_path / "s.lmdb"
    m = build(store, sample, targets=["band_gap"], cutoff=4.0, descriptors=["wacsfset1"])
    (store / "labels-wacsfset1.mdb").unlink()
    assert open_store(store).absent_descriptors == ["wacsfset1"]
    again = add_descriptors(store, ["wacsfset1"], jobs=1, progress=False)
    assert again["content_hash"] == m["content_hash"]  # the same labels, computed again
    assert again["parts"]["wacsfset1"] == m["parts"]["wacsfset1"]  # the very same file


def flip_unused_byte(path: Path) -> None:
    """Change one byte of the free space inside a leaf page (no record reads it)."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[40:44], "little")
    for pgno in range(2, len(data) // page):
        base = pgno * page
        flags = int.from_bytes(data[base + 10 : base + 12], "little")
        lower, upper = (int.from_bytes(data[base + k : base + k + 2], "little") for k in (12, 14))
        if flags == 0x02 and upper - lower > 8:
            data[base + lower + 4] ^= 0xFF
            path.write_bytes(bytes(data))
            return
    raise AssertionError(f"{path}: no leaf page with free space")


def test_verify_reports_a_part_whose_sha256_does_not_match(sample, tmp_path):
    store = tmp_path / "s.lmdb"
    build(store, sample, targets=["band_gap"], cutoff=4.0, descriptors=["wacsfset1"])
    listed = json.loads((store / "manifest.json").read_text())["parts"]["wacsfset1"]["sha256"]
    flip_unused_byte(store / "labels-wacsfset1.mdb")
    s = open_store(store)
    assert compute_hashes(s)["content_hash"] == s.content_hash  # every record reads intact
    ok, lines = verify_store(store, progress=False)
    assert not ok
    got = sha256(store / "labels-wacsfset1.mdb")
    assert f"labels-wacsfset1.mdb: sha256 MISMATCH (manifest {listed}, file {got})" in lines
    assert lines[-1].startswith(f"{store}: CORRUPT")
    # an absent part is named, not failed
    (store / "labels-wacsfset1.mdb").unlink()
    ok, lines = verify_store(store, progress=False)
    assert ok and "labels-wacsfset1.mdb: absent here (not checked)" in lines
    assert "not checked, absent here: wacsfset1" in lines[-1]


def test_parts_are_the_same_bytes_when_the_store_is_rebuilt(sample, tmp_path):
    a = build(tmp_path / "a.lmdb", sample, cutoff=4.0, descriptors=["wacsfset1"])
    b = build(tmp_path / "b.lmdb", sample, cutoff=4.0, descriptors=["wacsfset1"], chunk_size=3)
    assert a["parts"] == b["parts"]


def test_a_build_killed_just_before_it_is_put_in_place_finishes_on_rerun(
    sample, tmp_path, monkeypatch
):
    import fingerprint_pretrain.builder.build as build_module

    out = tmp_path / "k.lmdb"

    def killed(final, partial, old_lock):
        build_module.remove_working_env(partial)
        raise KeyboardInterrupt  # as if killed here

    monkeypatch.setattr(build_module, "_put_in_place", killed)
    with pytest.raises(KeyboardInterrupt):
        build(out, sample, cutoff=4.0)
    partial = tmp_path / "k.lmdb.partial"
    assert (partial / "manifest.json").is_file() and not (partial / "data.mdb").exists()
    monkeypatch.undo()
    m = build(out, sample, cutoff=4.0)
    assert not partial.exists() and open_store(out).content_hash == m["content_hash"]
    assert verify_store(out, progress=False)[0]


def test_zarr_twin_of_a_store_lacking_a_set_lists_only_what_it_holds(sample, tmp_path):
    from fingerprint_pretrain.builder.export import export_zarr

    store = tmp_path / "s.lmdb"
    build(store, sample, cutoff=4.0, descriptors=["wacsfset1", "wacsfset2"])
    (store / "labels-wacsfset2.mdb").unlink()
    zarr = export_zarr(open_store(store), tmp_path / "s.zarr", progress=False)
    manifest = json.loads((zarr / "manifest.json").read_text())
    assert "parts" not in manifest and list(manifest["descriptors"]) == ["wacsfset1"]
    twin, src = open_store(zarr), open_store(store)
    np.testing.assert_array_equal(twin[4]["wacsfset1"], src[4]["wacsfset1"])
    ok, lines = verify_store(zarr, progress=False)
    assert ok, lines


def test_convert_refuses_a_zarr_store(sample, tmp_path):
    from fingerprint_pretrain.builder.export import export_zarr

    store = tmp_path / "s.lmdb"
    build(store, sample, cutoff=4.0)
    zarr = export_zarr(open_store(store), tmp_path / "s.zarr", progress=False)
    with pytest.raises(BuildError, match="only LMDB stores are made of parts"):
        convert(zarr)


@pytest.mark.slow
def test_add_while_a_training_run_reads_the_store_leaves_its_losses_unchanged(tmp_path):
    """bench/bench_add_while_training.py (~55 s on two shared cores): fp-train pretrain of the
    same seed alone, and while fp-build add writes gmpset1 (then again with --force, back to
    back) into the store it reads; reference: the run alone's metrics.csv and test MAE (equal
    to the last digit); the adds span the training's epochs (timestamps); then fp-build
    verify."""
    import importlib.util

    path = REPO / "bench" / "bench_add_while_training.py"
    spec = importlib.util.spec_from_file_location("bench_add_while_training", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run(tmp_path, n=150, epochs=3, workers=1, add=("gmpset1",))
    adds, ends = result["adds"], result["epoch_ends_s"]
    assert result["train_rc"] == 0 and all(a["rc"] == 0 for a in adds), result
    assert len(ends) == 3 and adds[0]["training_running"] and not adds[0]["force"], result
    assert adds[-1]["end_s"] >= ends[-1] and adds[0]["start_s"] < ends[0], result
    assert len(result["metrics_alone"]) == 3 and result["metrics_identical"], result
    assert result["test_mae_identical"] and result["test_mae"][0] is not None, result
    assert result["verify_rc"] == 0 and result["sets_listed"] == ["wacsfset1", "gmpset1"]
    assert result["ok"]
