"""fp-build build: content checked against independent parses, determinism across workers,
rejections, strict mode, map growth, resume after interruption (including a real kill -9)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import lmdb
import numpy as np
import pytest
from fingerprint_pretrain.builder.build import BuildError
from fingerprint_pretrain.schemas import open_store
from fingerprint_pretrain.schemas.store import compute_hashes

from tests.builder.helpers import (
    MP_SAMPLE,
    MP_TARGETS,
    PEROV_SAMPLE,
    build,
    parse_cif,
    read_csv,
    write_csv,
)
from tests.builder.test_neighbors import assert_same, brute_force


@pytest.fixture(scope="module")
def mp_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "mp.lmdb"
    build(out, MP_SAMPLE, targets=MP_TARGETS, target_units={"band_gap": "eV"})
    return out


def test_records_match_independent_parse(mp_store):
    rows = {r["material_id"]: r for r in read_csv(MP_SAMPLE)}
    store = open_store(mp_store)
    assert len(store) == len(rows) == 40
    assert store.target_names == MP_TARGETS
    for k, rec in enumerate(store):
        ref = parse_cif(rows[rec["id"]]["cif"])
        np.testing.assert_array_equal(rec["z"], [site.specie.Z for site in ref])
        np.testing.assert_allclose(rec["pos"], ref.cart_coords, atol=1e-10)
        np.testing.assert_allclose(rec["cell"], ref.lattice.matrix, atol=1e-12)
        assert rec["pbc"].tolist() == [True, True, True]
        np.testing.assert_array_equal(
            rec["targets"], [float(rows[rec["id"]][t]) for t in MP_TARGETS]
        )
        assert rec["edge_index"].dtype == np.int32 and rec["edge_dist"].dtype == np.float32
        j, i = rec["edge_index"]
        vec = rec["pos"][j] + rec["edge_shift"] @ rec["cell"] - rec["pos"][i]
        np.testing.assert_allclose(np.linalg.norm(vec, axis=1), rec["edge_dist"], rtol=1e-6)
        if k % 8 == 0:  # full neighbour-list check against brute force on a few
            from fingerprint_pretrain.builder.neighbors import NeighbourList

            nl = NeighbourList(rec["edge_index"], rec["edge_shift"], rec["edge_dist"], 8.0)
            assert_same(nl, brute_force(ref.cart_coords, ref.lattice.matrix, [True] * 3, 8.0))


def test_manifest_counts_sources_and_units(mp_store):
    store = open_store(mp_store)
    m = store.manifest
    assert m["counts"]["records"] == 40 and m["counts"]["rejected"] == 0
    assert m["counts"]["atoms"] == sum(len(r["z"]) for r in store)
    assert m["counts"]["edges"] == sum(len(r["edge_dist"]) for r in store)
    np.testing.assert_array_equal(store.num_atoms(), [len(r["z"]) for r in store])
    np.testing.assert_array_equal(store.num_edges(), [len(r["edge_dist"]) for r in store])
    assert m["sources"][0]["sha256"] == hashlib.sha256(MP_SAMPLE.read_bytes()).hexdigest()
    assert m["targets"] == [
        {"name": "formation_energy_per_atom", "unit": ""},
        {"name": "band_gap", "unit": "eV"},
    ]
    assert m["cutoff"] == 8.0 and m["schema_version"] == "2.0"
    # the manifest's hash is what an independent recomputation over the records gives
    assert compute_hashes(store)["content_hash"] == m["content_hash"]
    assert not (mp_store / "lock.mdb").exists()
    assert not mp_store.with_name("mp.lmdb.partial").exists()


def test_same_content_whatever_the_workers_and_chunking(tmp_path, mp_store):
    expected = open_store(mp_store).content_hash
    m = build(tmp_path / "j2.lmdb", MP_SAMPLE, targets=MP_TARGETS, jobs=2, chunk_size=3)
    assert m["content_hash"] == expected
    # the unit is not content: a different unit, same hash
    m = build(tmp_path / "j1.lmdb", MP_SAMPLE, targets=MP_TARGETS, chunk_size=64)
    assert m["content_hash"] == expected


def test_map_size_grows_automatically(tmp_path):
    m = build(tmp_path / "small.lmdb", MP_SAMPLE, map_size=1 << 16, chunk_size=4)
    assert m["counts"]["records"] == 40
    assert (tmp_path / "small.lmdb" / "graphs.mdb").stat().st_size > 1 << 16


NACL_CIF = """data_NaCl
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_type_symbol
_atom_site_label
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
{sites}
"""


def nacl(sites: str) -> str:
    return NACL_CIF.format(sites=sites)


def bad_inputs_csv(tmp_path):
    good = read_csv(MP_SAMPLE)[:3]
    rows = [
        [good[0]["material_id"], good[0]["band_gap"], good[0]["cif"]],
        ["bad-cif", "1.0", "this is not a CIF at all\n_cell_length_a oops"],
        ["overlap", "1.0", nacl("Na Na1 0 0 0\nCl Cl1 0.5 0.5 0.5\nCl Cl2 0.01 0 0")],
        ["isolated", "1.0", nacl("Na Na1 0 0 0\nCl Cl1 0.5 0.5 0.5").replace("5.64", "40.0")],
        ["no-target", "", good[1]["cif"]],
        [good[2]["material_id"], good[2]["band_gap"], good[2]["cif"]],
    ]
    return write_csv(tmp_path / "mixed.csv", ["material_id", "band_gap", "cif"], rows)


def test_bad_structures_are_rejected_with_file_row_and_reason(tmp_path):
    src = bad_inputs_csv(tmp_path)
    m = build(tmp_path / "mixed.lmdb", src, targets=["band_gap"], cutoff=8.0)
    assert m["counts"] == {**m["counts"], "records": 2, "rejected": 4, "inputs": 6}
    rejected = read_csv(tmp_path / "mixed.lmdb" / "rejected.csv")
    by_id = {r["id"]: r for r in rejected}
    assert set(by_id) == {"bad-cif", "overlap", "isolated", "no-target"}
    assert all(r["source"] == str(src) and r["row_kind"] == "line" for r in rejected)
    assert by_id["bad-cif"]["reason"].startswith("unparsable CIF")
    assert "overlapping atoms" in by_id["overlap"]["reason"]
    assert "no neighbour within 8.0" in by_id["isolated"]["reason"]
    assert by_id["no-target"]["reason"].startswith("missing target")
    # rows are the CSV line numbers where each record starts (header = line 1)
    lines = src.read_text().splitlines()
    for r in rejected:
        assert lines[int(r["row"]) - 1].startswith(r["id"] + ",")
    ids = [rec["id"] for rec in open_store(tmp_path / "mixed.lmdb")]
    assert ids == [read_csv(MP_SAMPLE)[0]["material_id"], read_csv(MP_SAMPLE)[2]["material_id"]]


def test_missing_targets_kept_as_nan_when_allowed(tmp_path):
    src = bad_inputs_csv(tmp_path)
    build(tmp_path / "nan.lmdb", src, targets=["band_gap"], allow_missing_targets=True)
    recs = {r["id"]: r for r in open_store(tmp_path / "nan.lmdb")}
    assert np.isnan(recs["no-target"]["targets"]).all()


def test_empty_and_non_finite_structures_rejected(tmp_path):
    good = {
        "structure_id": "ok",
        "positions": [[0, 0, 0], [2.82, 2.82, 2.82]],
        "cell": (np.eye(3) * 5.64).tolist(),
        "atomic_numbers": [11, 17],
        "y": [1.0],
    }
    data = [
        good,
        {**good, "structure_id": "empty", "positions": [], "atomic_numbers": []},
        {**good, "structure_id": "nan-pos", "positions": [[0, 0, 0], [float("nan"), 1, 1]]},
        {**good, "structure_id": "flat-cell", "cell": [[5.64, 0, 0], [5.64, 0, 0], [0, 0, 5.64]]},
    ]
    src = tmp_path / "mdl.json"
    src.write_text(json.dumps(data))
    m = build(tmp_path / "mdl.lmdb", src)
    reasons = {r["id"]: r["reason"] for r in read_csv(tmp_path / "mdl.lmdb" / "rejected.csv")}
    assert m["counts"]["records"] == 1
    assert reasons["empty"].startswith("empty structure")
    assert reasons["nan-pos"] == "non-finite coordinates"
    assert reasons["flat-cell"].startswith("degenerate cell")


def test_strict_stops_at_first_problem_naming_file_and_line(tmp_path):
    src = bad_inputs_csv(tmp_path)
    line = next(
        k for k, text in enumerate(src.read_text().splitlines(), 1) if text.startswith("bad-cif,")
    )
    with pytest.raises(BuildError, match=rf"{src}, line {line} \(id bad-cif\): unparsable CIF"):
        build(tmp_path / "strict.lmdb", src, targets=["band_gap"], strict=True)
    assert not (tmp_path / "strict.lmdb").exists()


def test_existing_store_needs_overwrite(tmp_path):
    build(tmp_path / "a.lmdb", PEROV_SAMPLE, id_column="castelli_id")
    with pytest.raises(BuildError, match="already exists; pass --overwrite"):
        build(tmp_path / "a.lmdb", PEROV_SAMPLE, id_column="castelli_id")
    m = build(
        tmp_path / "a.lmdb", PEROV_SAMPLE, id_column="castelli_id", cutoff=6.0, overwrite=True
    )
    assert open_store(tmp_path / "a.lmdb").manifest["cutoff"] == 6.0 == m["cutoff"]
    assert not (tmp_path / "a.lmdb.old").exists()


def test_interrupted_build_resumes_to_the_same_hash(tmp_path, mp_store):
    out = tmp_path / "resume.lmdb"
    assert build(out, MP_SAMPLE, targets=MP_TARGETS, chunk_size=7, stop_after_chunks=2) == {}
    assert not out.exists() and out.with_name("resume.lmdb.partial").is_dir()
    # resume with other jobs/chunking: content does not depend on them
    m = build(out, MP_SAMPLE, targets=MP_TARGETS, chunk_size=5, jobs=2)
    assert m["content_hash"] == open_store(mp_store).content_hash
    assert m["counts"]["inputs"] == 40


def test_resume_with_different_options_is_refused(tmp_path):
    out = tmp_path / "r.lmdb"
    build(out, MP_SAMPLE, chunk_size=7, stop_after_chunks=1)
    with pytest.raises(BuildError, match="differs in: cutoff"):
        build(out, MP_SAMPLE, cutoff=6.0)


def _progress_records(partial) -> int:
    if not (partial / "data.mdb").exists():
        return 0
    try:
        env = lmdb.open(str(partial), readonly=True, lock=False)
    except lmdb.Error:
        return 0
    try:
        with env.begin() as txn:
            raw = txn.get(b"b/progress")
        return json.loads(raw)["records"] if raw else 0
    finally:
        env.close()


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_hash(tmp_path):
    """Really kill a running fp-build (and its workers) with SIGKILL mid-build, restart it."""
    rows = read_csv(MP_SAMPLE) * 6  # 240 structures; ids repeat, which the store allows
    src = write_csv(tmp_path / "in.csv", list(rows[0]), [list(r.values()) for r in rows])
    reference = build(tmp_path / "ref.lmdb", src, targets=MP_TARGETS)["content_hash"]
    out = tmp_path / "killed.lmdb"
    partial = tmp_path / "killed.lmdb.partial"
    cmd = [
        sys.executable,
        "-m",
        "fingerprint_pretrain.builder.cli",
        "build",
        str(src),
        "--out",
        str(out),
        "-t",
        MP_TARGETS[0],
        "-t",
        MP_TARGETS[1],
        "-j",
        "2",
        "--chunk-size",
        "4",
        "-q",
    ]
    killed_at = None
    for _attempt in range(3):
        proc = subprocess.Popen(cmd, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            done = _progress_records(partial)
            if 20 <= done < 200:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed_at = done
                break
            time.sleep(0.02)
        if killed_at is not None:
            break
        proc.wait()
    assert killed_at is not None, "could not catch the build mid-way"
    assert not out.exists() and partial.is_dir()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"content hash {reference}" in result.stdout
    assert compute_hashes(open_store(out))["content_hash"] == reference


@pytest.mark.slow
def test_dask_backend_on_a_local_cluster(tmp_path, mp_store):
    pytest.importorskip("distributed")
    m = build(
        tmp_path / "dask.lmdb", MP_SAMPLE, targets=MP_TARGETS, backend="dask", jobs=2, chunk_size=8
    )
    assert m["content_hash"] == open_store(mp_store).content_hash


def test_overwrite_in_the_same_process_reads_the_new_store(tmp_path):
    out = tmp_path / "o.lmdb"
    build(out, PEROV_SAMPLE, id_column="castelli_id")
    assert open_store(out)[0]["edge_dist"].max() >= 6.0  # read: this process holds a handle
    build(out, PEROV_SAMPLE, id_column="castelli_id", cutoff=5.0, overwrite=True)
    assert open_store(out)[0]["edge_dist"].max() < 5.0


def test_process_chunk_names_each_result():
    """A worker's result per item: an encoded record with its sizes and elements, or the item
    (payload dropped) with the reason; checked against a brute-force neighbour count."""
    from fingerprint_pretrain.builder.build import EncodedRecord, RejectedItem, process_chunk
    from fingerprint_pretrain.builder.labels import LabelConfig
    from fingerprint_pretrain.builder.readers import RawItem
    from fingerprint_pretrain.schemas.record import decode_record

    cell = np.eye(3) * 5.64
    pos = np.array([[0.0, 0.0, 0.0], [2.82, 2.82, 2.82]])
    good = {"numbers": [11, 17], "positions": pos.tolist(), "cell": cell.tolist(), "pbc": [1] * 3}
    items = [
        RawItem("in.json", 1, "nacl", (1.0,), "arrays", good, "item"),
        RawItem("in.json", 2, "bad", (1.0,), "invalid", "no cell given", "item"),
    ]
    chunk = process_chunk(items, 5.0, False, LabelConfig(("wacsfset2",)), ("band_gap",))
    record, rejected = chunk.results
    assert isinstance(record, EncodedRecord) and isinstance(rejected, RejectedItem)
    assert (record.n_atoms, record.elements) == (2, [11, 17])
    assert record.n_edges == len(brute_force(pos, cell, [True] * 3, 5.0))
    assert decode_record(record.graph_bytes)["id"] == "nacl"
    assert list(record.labels) == ["wacsfset2"] == list(chunk.cast_errors)
    assert chunk.stats["wacsfset2"].count == 2  # the two atoms of the one record
    assert rejected.item.record_id == "bad" and rejected.item.payload is None
    assert rejected.reason == "no cell given"
