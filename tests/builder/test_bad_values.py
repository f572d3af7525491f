"""Bad values are named, not tracebacks: infinite targets, elements without a GMP density,
bytes that are not UTF-8, a full disk (simulated, and for real on a tiny tmpfs when root), and a
build in which nothing survives."""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import subprocess

import lmdb
import pytest
from fingerprint_pretrain.builder.add import add_descriptors
from fingerprint_pretrain.builder.build import BuildError
from fingerprint_pretrain.builder.lmdb_writer import LmdbWriter
from fingerprint_pretrain.schemas import open_store

from tests.builder.helpers import MP_SAMPLE, MP_TARGETS, PEROV_SAMPLE, build, read_csv, write_csv
from tests.builder.test_build import nacl

PEROV = {"id_column": "castelli_id", "targets": ["heat_all"]}
AMERICIUM = nacl("Am Am1 0 0 0\nCl Cl1 0.5 0.5 0.5")  # Z = 95: graphs fine, no GMP density


@pytest.fixture(scope="module")
def mp_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "mp.lmdb"
    return build(out, MP_SAMPLE, targets=MP_TARGETS)["content_hash"]


@pytest.fixture(scope="module")
def perov_graphs(tmp_path_factory):
    out = tmp_path_factory.mktemp("perov") / "graphs.lmdb"
    build(out, PEROV_SAMPLE, **PEROV)
    return out


def rejected(store_dir) -> dict[str, dict]:
    return {r["id"]: r for r in read_csv(store_dir / "rejected.csv")}


def line_of(text: str, prefix: str) -> int:
    return next(k for k, t in enumerate(text.splitlines(), 1) if t.startswith(prefix))


# --------------------------------------------------------------------------------------------
# Infinite targets
# --------------------------------------------------------------------------------------------
def infinite_targets_csv(tmp_path):
    good = read_csv(MP_SAMPLE)[:2]
    rows = [
        [good[0]["material_id"], good[0]["band_gap"], good[0]["cif"]],
        ["inf-gap", "inf", good[0]["cif"]],
        ["minus-inf-gap", "-Infinity", good[1]["cif"]],
        [good[1]["material_id"], good[1]["band_gap"], good[1]["cif"]],
    ]
    return write_csv(tmp_path / "inf.csv", ["material_id", "band_gap", "cif"], rows)


def test_infinite_targets_are_rejected_with_a_reason(tmp_path):
    src = infinite_targets_csv(tmp_path)
    m = build(tmp_path / "inf.lmdb", src, targets=["band_gap"], allow_missing_targets=True)
    assert m["counts"]["records"] == 2 and m["counts"]["rejected"] == 2
    reasons = rejected(tmp_path / "inf.lmdb")
    assert reasons["inf-gap"]["reason"] == "infinite target band_gap (inf)"
    assert reasons["minus-inf-gap"]["reason"] == "infinite target band_gap (-inf)"
    assert int(reasons["inf-gap"]["row"]) == line_of(src.read_text(), "inf-gap,")
    assert all(abs(rec["targets"][0]) < 1e3 for rec in open_store(tmp_path / "inf.lmdb"))


def test_infinite_target_stops_a_strict_build_naming_file_and_line(tmp_path):
    src = infinite_targets_csv(tmp_path)
    line = line_of(src.read_text(), "inf-gap,")
    with pytest.raises(
        BuildError, match=rf"{src}, line {line} \(id inf-gap\): infinite target band_gap"
    ):
        build(tmp_path / "strict.lmdb", src, targets=["band_gap"], strict=True)


def test_infinite_target_in_json_input(tmp_path):
    cell = [[5.64, 0, 0], [0, 5.64, 0], [0, 0, 5.64]]
    ok = {"structure_id": "ok", "positions": [[0, 0, 0], [2.82, 2.82, 2.82]], "cell": cell}
    ok.update({"atomic_numbers": [11, 17], "y": [1.0]})
    src = tmp_path / "mdl.json"
    src.write_text(json.dumps([ok, {**ok, "structure_id": "inf-y", "y": [float("inf")]}]))
    m = build(tmp_path / "mdl.lmdb", src)
    assert m["counts"]["records"] == 1
    assert rejected(tmp_path / "mdl.lmdb")["inf-y"]["reason"] == "infinite target y (inf)"


# --------------------------------------------------------------------------------------------
# Elements without a GMP model density (Z >= 95)
# --------------------------------------------------------------------------------------------
def americium_csv(tmp_path):
    good = read_csv(MP_SAMPLE)[:2]
    rows = [
        [good[0]["material_id"], good[0]["band_gap"], good[0]["cif"]],
        ["americium", "1.0", AMERICIUM],
        [good[1]["material_id"], good[1]["band_gap"], good[1]["cif"]],
    ]
    return write_csv(tmp_path / "am.csv", ["material_id", "band_gap", "cif"], rows)


def test_build_with_a_gmp_set_rejects_structures_without_density(tmp_path):
    src = americium_csv(tmp_path)
    m = build(tmp_path / "gmp.lmdb", src, targets=["band_gap"], descriptors=["gmpset2"])
    assert m["counts"]["records"] == 2 and list(m["descriptors"]) == ["gmpset2"]
    reason = rejected(tmp_path / "gmp.lmdb")["americium"]["reason"]
    assert reason == "no GMP density for element Am (Z=95) (label set gmpset2)"
    # without a GMP set the same structure is a fine graph
    m = build(tmp_path / "graphs.lmdb", src, targets=["band_gap"], descriptors=["wacsfset2"])
    assert m["counts"]["records"] == 3 and m["counts"]["rejected"] == 0


@pytest.fixture
def americium_store(tmp_path):
    out = tmp_path / "am.lmdb"
    build(out, americium_csv(tmp_path), targets=["band_gap"])
    return out


def test_add_refuses_a_gmp_set_before_any_work(americium_store):
    manifest = (americium_store / "manifest.json").read_text()
    files = sorted(p.name for p in americium_store.iterdir())
    expected = (
        rf"{americium_store}: cannot add gmpset1 \(also gmpset3\): no GMP density for element "
        rf"Am \(Z=95\), present in 1 record\(s\) \(e.g. record 1, id americium\)"
    )
    with pytest.raises(BuildError, match=expected):
        add_descriptors(
            americium_store, ["wacsfset2", "gmpset1", "gmpset3"], jobs=1, progress=False
        )
    # nothing was computed, not even the set that could have been: no part, no working env
    assert (americium_store / "manifest.json").read_text() == manifest
    assert sorted(p.name for p in americium_store.iterdir()) == files


def test_add_cli_gives_one_line_for_missing_gmp_density(americium_store):
    from tests.builder.test_cli import fp_build, one_line_error

    line = one_line_error(fp_build("add", americium_store, "-d", "gmpset2", "-q"), 1)
    assert "cannot add gmpset2: no GMP density for element Am (Z=95)" in line


# --------------------------------------------------------------------------------------------
# Bytes that are not UTF-8
# --------------------------------------------------------------------------------------------
def non_utf8_csv(tmp_path, gz: bool):
    good = read_csv(MP_SAMPLE)[:4]
    src = write_csv(
        tmp_path / "bytes.csv",
        ["material_id", "band_gap", "cif"],
        [[r["material_id"], r["band_gap"], r["cif"]] for r in good],
    )
    data = src.read_bytes()
    # a Latin-1 byte inside the CIF of row 2 (a few lines into it) and inside the id of row 4
    cif_line = good[1]["cif"].splitlines()[3].encode()
    data = data.replace(cif_line, cif_line + b" \xe9", 1)
    data = data.replace(good[3]["material_id"].encode(), good[3]["material_id"].encode() + b"\xff")
    src.write_bytes(data)
    if gz:
        gz_path = tmp_path / "bytes.csv.gz"
        gz_path.write_bytes(gzip.compress(data))
        return gz_path, data, good
    return src, data, good


@pytest.mark.parametrize("gz", [False, True], ids=["csv", "csv.gz"])
def test_non_utf8_rows_are_rejected_with_their_line(tmp_path, gz):
    src, data, good = non_utf8_csv(tmp_path, gz)
    m = build(tmp_path / "b.lmdb", src, targets=["band_gap"])
    assert m["counts"]["records"] == 2 and m["counts"]["rejected"] == 2
    ids = [rec["id"] for rec in open_store(tmp_path / "b.lmdb")]
    assert ids == [good[0]["material_id"], good[2]["material_id"]]
    lines = data.split(b"\n")
    byte_line = {b: next(k for k, t in enumerate(lines, 1) if b in t) for b in (b"\xe9", b"\xff")}
    by_row = {int(r["row"]): r for r in read_csv(tmp_path / "b.lmdb" / "rejected.csv")}
    start_2 = next(
        k for k, t in enumerate(lines, 1) if t.startswith(good[1]["material_id"].encode())
    )
    e9_line, ff_line = byte_line[b"\xe9"], byte_line[b"\xff"]
    assert by_row[start_2]["reason"] == f"not valid UTF-8: byte 0xe9 on line {e9_line} (column cif)"
    row_4 = by_row[ff_line]
    assert (
        row_4["reason"] == f"not valid UTF-8: byte 0xff on line {row_4['row']} (column material_id)"
    )
    assert row_4["id"] == good[3]["material_id"] + "\\xff"


def test_non_utf8_byte_stops_a_strict_build_naming_file_and_line(tmp_path):
    src, data, good = non_utf8_csv(tmp_path, gz=False)
    start = line_of(data.decode("latin-1"), good[1]["material_id"] + ",")
    with pytest.raises(BuildError, match=rf"{src}, line {start} \(id .*\): not valid UTF-8"):
        build(tmp_path / "s.lmdb", src, targets=["band_gap"], strict=True)


def test_non_utf8_byte_in_cgcnn_id_prop(tmp_path):
    rows = read_csv(MP_SAMPLE)[:3]
    folder = tmp_path / "cgcnn"
    folder.mkdir()
    for r in rows:
        (folder / f"{r['material_id']}.cif").write_text(r["cif"])
    lines = [f"{r['material_id']},{r['band_gap']}".encode() for r in rows]
    lines[1] += b"\xff"
    (folder / "id_prop.csv").write_bytes(b"\n".join(lines) + b"\n")
    m = build(tmp_path / "c.lmdb", folder)
    assert m["counts"]["records"] == 2
    (reason,) = [r["reason"] for r in rejected(tmp_path / "c.lmdb").values()]
    assert reason == "not valid UTF-8: byte 0xff on line 2 (column y)"


# --------------------------------------------------------------------------------------------
# A full disk
# --------------------------------------------------------------------------------------------
DISK_FULL = [
    OSError(errno.ENOSPC, "No space left on device"),
    lmdb.DiskError("mdb_txn_commit: No space left on device"),
    lmdb.MapFullError("mdb_txn_commit: MDB_MAP_FULL"),
]


def fail_on_write(monkeypatch, call: int, error: Exception) -> None:
    """Make the ``call``-th LMDB commit fail with ``error`` (as a full disk would)."""
    real = LmdbWriter.write
    calls = []

    def write(self, items):
        calls.append(1)
        if len(calls) == call:
            raise error
        return real(self, items)

    monkeypatch.setattr(LmdbWriter, "write", write)


@pytest.mark.parametrize("error", DISK_FULL, ids=lambda e: type(e).__name__)
def test_disk_full_during_build_is_one_line_and_resumable(
    tmp_path, monkeypatch, error, mp_reference
):
    out = tmp_path / "mp.lmdb"
    fail_on_write(monkeypatch, 4, error)
    message = (
        f"disk full while writing {out} (partial store {out}.partial kept); free space and "
        f"rerun the same command to resume"
    )
    with pytest.raises(BuildError) as full:
        build(out, MP_SAMPLE, targets=MP_TARGETS, chunk_size=5)
    assert str(full.value) == message
    assert not out.exists() and (tmp_path / "mp.lmdb.partial" / "data.mdb").exists()
    monkeypatch.undo()
    assert build(out, MP_SAMPLE, targets=MP_TARGETS, chunk_size=5)["content_hash"] == mp_reference


def test_disk_full_during_add_is_one_line_and_resumable(tmp_path, monkeypatch, perov_graphs):
    reference = shutil.copytree(perov_graphs, tmp_path / "ref.lmdb")
    expected = add_descriptors(reference, ["wacsfset1"], jobs=1, progress=False)["content_hash"]
    store = shutil.copytree(perov_graphs, tmp_path / "s.lmdb")
    fail_on_write(monkeypatch, 3, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(BuildError) as full:
        add_descriptors(store, ["wacsfset1"], jobs=1, chunk_size=5, progress=False)
    assert str(full.value) == (
        f"disk full while writing {store}; free space and rerun the same command to resume"
    )
    assert open_store(store).descriptor_names == []
    monkeypatch.undo()
    m = add_descriptors(store, ["wacsfset1"], jobs=1, chunk_size=5, progress=False)
    assert m["content_hash"] == expected


def _mount_tmpfs(path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return result.returncode == 0


def _remount(path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def test_really_full_tmpfs_then_resume(tmp_path, mp_reference):
    """A real full file system (a 1 MiB tmpfs; needs root): LMDB reports the short write as
    EIO, which the builder recognises from the free space left."""
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, "1m"):
        pytest.skip("needs root and tmpfs mounts")
    try:
        out = mnt / "mp.lmdb"
        with pytest.raises(BuildError, match=rf"^disk full while writing {out} \(partial"):
            build(out, MP_SAMPLE, targets=MP_TARGETS, chunk_size=4)
        _remount(mnt, "64m")  # space freed
        m = build(out, MP_SAMPLE, targets=MP_TARGETS, chunk_size=4)
        assert m["content_hash"] == mp_reference
        # and for add: leave ~200 kB free, far less than the wACSF set needs
        used = sum(f.stat().st_size for f in out.iterdir())
        _remount(mnt, f"{(used >> 10) + 200}k")
        with pytest.raises(BuildError, match=rf"^disk full while writing {out};"):
            add_descriptors(out, ["wacsfset1"], jobs=1, chunk_size=4, progress=False)
        _remount(mnt, "64m")
        m = add_descriptors(out, ["wacsfset1"], jobs=1, chunk_size=4, progress=False)
        ref = tmp_path / "ref.lmdb"
        build(ref, MP_SAMPLE, targets=MP_TARGETS, descriptors=["wacsfset1"])
        assert m["content_hash"] == open_store(ref).content_hash
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# --------------------------------------------------------------------------------------------
# Nothing kept
# --------------------------------------------------------------------------------------------
def test_build_that_keeps_no_structure_fails_and_says_why(tmp_path):
    rows = [
        ["bad-cif", "1.0", "this is not a CIF at all"],
        ["overlap", "1.0", nacl("Na Na1 0 0 0\nCl Cl1 0.5 0.5 0.5\nCl Cl2 0.01 0 0")],
    ]
    src = write_csv(tmp_path / "bad.csv", ["material_id", "band_gap", "cif"], rows)
    out = tmp_path / "bad.lmdb"
    with pytest.raises(BuildError) as nothing:
        build(out, src, targets=["band_gap"])
    partial = tmp_path / "bad.lmdb.partial"
    assert str(nothing.value).startswith(
        f"no structure kept: all 2 inputs were rejected (first: {src}, line 2 (id bad-cif): "
        f"unparsable CIF"
    )
    assert str(nothing.value).endswith(f"every reason is in {partial / 'rejected.csv'}")
    assert not out.exists()
    assert set(rejected(partial)) == {"bad-cif", "overlap"}


def test_build_of_an_empty_input_fails(tmp_path):
    src = write_csv(tmp_path / "empty.csv", ["material_id", "band_gap", "cif"], [])
    with pytest.raises(BuildError, match=rf"^{src}: no structures in the input; nothing to store"):
        build(tmp_path / "e.lmdb", src, targets=["band_gap"])
    assert not (tmp_path / "e.lmdb").exists()
