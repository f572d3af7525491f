"""The dataset registry, the local copies it knows, splits next to stores, and the whole
fetch -> build -> verify -> split path on small real files (ids and targets aligned from source
file to store record; a re-run is a no-op)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fingerprint_pretrain.builder.build import BuildError
from fingerprint_pretrain.builder.datasets import registry
from fingerprint_pretrain.builder.datasets.make import (
    MakeOptions,
    NotAvailable,
    align,
    fetch_dataset,
    make_datasets,
    resolve,
    summary_table,
)
from fingerprint_pretrain.builder.datasets.registry import DATASETS, Dataset, RemoteFile, Source
from fingerprint_pretrain.schemas import open_store
from fingerprint_pretrain.schemas.splits import kfold_splits, random_split

from tests.builder.helpers import PEROV_SAMPLE, read_csv
from tests.conftest import DATASETS as SHARED
from tests.conftest import dataset as shared_file
from tests.conftest import needs_shared

HEX64 = re.compile(r"[0-9a-f]{64}")
TASKS = {
    "jdft2d",
    "phonons",
    "dielectric",
    "log_gvrh",
    "log_kvrh",
    "perovskites",
    "mp_gap",
    "mp_e_form",
    "c2db",
    "qmof",
    "surface",
}


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
def test_registry_covers_the_paper():
    tasks = {n for n, d in DATASETS.items() if d.role == "task"}
    assert tasks == TASKS
    assert [n for n, d in DATASETS.items() if d.role == "pretrain"] == ["mp_relaxed"]
    assert DATASETS["mp_relaxed"].size == 62783
    for d in DATASETS.values():
        assert d.citation and d.licence and d.title and d.sources, d.name
        assert d.role == "pretrain" or (d.prop and d.splits), d.name
        assert "random" in d.splits or d.role == "pretrain", d.name
        full = [s for s in d.sources if not s.subset]
        assert full and full[0].kind == "download", f"{d.name}: first source is not official"
        for s in d.sources:
            assert s.note and s.verified and s.store and s.fmt, (d.name, s.name)
            if s.kind != "mp-api":
                assert s.files, (d.name, s.name)
            for f in s.files:
                if s.kind == "download":
                    assert f.urls and all(u.startswith("https://") for u in f.urls)
                    assert f.checksum != "none published", (d.name, f.name)
                if f.sha256:
                    assert HEX64.fullmatch(f.sha256)
                for _, sha in f.aliases:
                    assert HEX64.fullmatch(sha)
            if s.subset:
                assert s.store != d.name, "a stand-in must not take the dataset's store name"
    # MatBench's eight, each with matminer's published sha256
    for name in TASKS - {"c2db", "qmof", "surface"}:
        mb = DATASETS[name].source("matbench")
        assert mb.files[0].urls[0] == f"{registry.MATBENCH_URL}matbench_{name}.json.gz"
        assert HEX64.fullmatch(mb.files[0].sha256) and mb.count == DATASETS[name].size


@needs_shared
def test_local_copies_are_the_registered_ones():
    """Every file of ../shared/datasets is known to the registry and matches its checksum;
    record counts match the paper's datasets (or the stand-in's stated count)."""
    from fingerprint_pretrain.builder.datasets.download import Fetcher

    fetcher = Fetcher(Path("/nonexistent-cache"), [SHARED], offline=True, log=lambda s: None)
    known = {}
    for d in DATASETS.values():
        for s in d.sources:
            for f in s.files:
                hit, notes = fetcher.locate(f)
                assert not notes, notes
                if hit is not None:
                    assert hit.verified
                    known.setdefault(hit.path.name, []).append((d, s))
    assert set(known) >= {
        "mdl_jdft2d.json.gz",
        "mdl_phonons.json.gz",
        "mdl_c2db_workfunction.json.gz",
        "perov_5.csv.gz",
        "mp_20_subset.csv.gz",
        "mp_relaxed_mpf_subset.csv.gz",
        "mp2018_targets_with_structures.csv.gz",
        "mp_dielectric_2017_subset.csv.gz",
        "qmof_bandgap_cif.csv.gz",
    }
    for name, users in known.items():
        rows = None if name.endswith(".json.gz") else read_csv_gz(SHARED / name)
        for d, s in users:
            if rows is None:
                with gzip.open(SHARED / name, "rt") as fh:
                    n = len(json.load(fh))
            else:  # a source counts the rows that have all its targets (the others are rejected)
                n = sum(all(r[t] not in ("", None) for t in s.targets) for r in rows)
                assert all(r[s.id_column or "material_id"] and r["cif"].strip() for r in rows)
            assert n == s.count, (name, s.name)
            if not s.subset:
                assert n == d.size, name


def read_csv_gz(path: Path) -> list[dict]:
    import csv
    import io

    with gzip.open(path) as fh:
        return list(csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8")))


def test_authors_jdft2d_is_matbench_in_matbench_order():
    """The authors' jdft2d copy keeps MatBench's order: targets of mb-jdft2d-001..005 and
    632..636 as published (MatBench values quoted in the pyecif README, 6 decimals)."""
    with gzip.open(shared_file("mdl_jdft2d.json.gz"), "rt") as fh:
        data = json.load(fh)
    matbench = {
        0: 63.593833,
        1: 134.86375,
        2: 43.114667,
        3: 240.715488,
        4: 67.442833,
        631: 26.426545,
        632: 43.574286,
        633: 88.808659,
        634: 132.26525,
        635: 63.564333,
    }
    for k, value in matbench.items():
        assert data[k]["structure_id"] == str(k)
        assert round(data[k]["y"][0], 6) == pytest.approx(value, abs=1e-6)
    # mb-jdft2d-001 is HfSiTe: a = b = 3.66730534 Å, c = 27.311209 Å, Hf at (1.493, 3.327, 7.263)
    assert sorted(data[0]["atomic_numbers"]) == [14, 14, 52, 52, 72, 72]
    np.testing.assert_allclose(
        np.linalg.norm(data[0]["cell"], axis=1), [3.66730534, 3.66730534, 27.311209]
    )
    np.testing.assert_allclose(data[0]["positions"][0], [1.49323138, 3.32688405, 7.26257785])


def test_git_blob_ids_of_the_verified_files_agree_with_their_sha256():
    """For the authors' files checked here, the registry's two checksums describe one content."""
    for name, alias in [
        ("jdft2d", "mdl_jdft2d.json.gz"),
        ("c2db", "mdl_c2db_workfunction.json.gz"),
    ]:
        spec = DATASETS[name].source("authors").files[0]
        raw = gzip.decompress(shared_file(alias).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == spec.sha256
        assert hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest() == spec.git_blob_sha1
        assert len(raw) == spec.size


# --------------------------------------------------------------------------------------------
# Splits and alignment
# --------------------------------------------------------------------------------------------
def test_align_maps_store_ids_into_the_source():
    ids = ["a", "b", "c", "b", "d"]
    np.testing.assert_array_equal(align(["a", "c", "b", "d"], ids), [0, 2, 3, 4])
    with pytest.raises(BuildError, match="not aligned"):
        align(["c", "a"], ids)


def _tiny_dataset(tmp_path: Path, rows: int = 20, broken: int | None = None) -> Dataset:
    """A registry entry for the first ``rows`` perovskites of the bundled sample, written to a
    mirror folder as the stand-ins are (row ``broken`` gets an unparsable CIF)."""
    import csv

    mirror = tmp_path / "mirror"
    mirror.mkdir(exist_ok=True)
    sample = read_csv(PEROV_SAMPLE)[:rows]
    if broken is not None:
        sample[broken] = {**sample[broken], "cif": "not a CIF"}
    path = mirror / "tiny_perov.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(sample[0]))
        writer.writeheader()
        writer.writerows(sample)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    source = Source(
        name="tiny",
        kind="local",
        files=(RemoteFile("tiny_perov.csv", sha256=sha),),
        fmt="csv-cif",
        store="tiny_perov",
        targets=("heat_all",),
        units={"heat_all": "eV/cell"},
        id_column="castelli_id",
        count=rows,
        note="test",
        verified="test",
    )
    return dataclasses.replace(DATASETS["perovskites"], name="tiny", sources=(source,), size=rows)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    d = _tiny_dataset(tmp_path, rows=21, broken=7)
    monkeypatch.setitem(DATASETS, "tiny", d)
    opts = MakeOptions(
        out=tmp_path / "stores",
        cache=tmp_path / "cache",
        from_dirs=[tmp_path / "mirror"],
        offline=True,
        jobs=1,
        descriptors=["wacsfset2"],
        progress=False,
        log=lambda line: None,
    )
    return d, opts


def test_fetch_builds_verifies_splits_and_is_then_a_no_op(tiny):
    d, opts = tiny
    row = fetch_dataset("tiny", opts)
    assert row["status"] == "built" and row["records"] == 20 and row["rejected"] == 1
    store = opts.out / "tiny_perov.lmdb"
    s = open_store(store)
    assert s.descriptor_names == ["wacsfset2"] and s.target_names == ["heat_all"]

    # ids and targets aligned with the source file, by id
    source = {r["castelli_id"]: r for r in read_csv(opts.from_dirs[0] / "tiny_perov.csv")}
    for i in range(len(s)):
        rec = s.get(i, descriptors=[])
        assert rec["targets"][0] == pytest.approx(float(source[rec["id"]]["heat_all"]))
    from tests.builder.helpers import parse_cif

    for i in (0, 9, 19):
        rec = s.get(i, descriptors=[])
        ref = parse_cif(source[rec["id"]]["cif"])
        np.testing.assert_allclose(rec["pos"], ref.cart_coords, atol=1e-8)
        np.testing.assert_array_equal(rec["z"], ref.atomic_numbers)

    # splits: the paper's random ones and MatBench's folds, disjoint and covering
    folder = opts.out / "tiny_perov.splits"
    info = json.loads((folder / "splits.json").read_text())
    assert info["store_content_hash"] == s.content_hash and info["records"] == 20
    for seed in (111, 222, 333, 444, 555):
        z = np.load(folder / f"seed{seed}.npz", allow_pickle=False)
        parts = [z["train"], z["val"], z["test"]]
        assert sorted(np.concatenate(parts).tolist()) == list(range(20))
        for got, want in zip(parts, random_split(20, [0.6, 0.2, 0.2], seed)):
            np.testing.assert_array_equal(got, want)  # what fp-train --seed computes
        assert str(z["store_content_hash"]) == s.content_hash
    tests = []
    source_ids = [r["castelli_id"] for r in read_csv(opts.from_dirs[0] / "tiny_perov.csv")]
    store_ids = [s.get(i, descriptors=[])["id"] for i in range(len(s))]
    for k, (_, test_rows) in enumerate(kfold_splits(21)):
        z = np.load(folder / f"matbench_fold{k}.npz", allow_pickle=False)
        assert set(z["train"]).isdisjoint(z["test"])
        assert sorted(np.concatenate([z["train"], z["test"]]).tolist()) == list(range(20))
        # the fold's test records are MatBench's test rows, less the rejected row 7
        assert [store_ids[i] for i in z["test"]] == [source_ids[r] for r in test_rows if r != 7]
        tests.extend(z["test"].tolist())
    assert sorted(tests) == list(range(20))  # folds' test sets are disjoint and cover

    side = json.loads((opts.out / "tiny_perov.dataset.json").read_text())
    assert side["source"] == "tiny" and side["content_hash"] == s.content_hash
    assert side["build_seconds"] > 0

    # re-running: nothing rebuilt, nothing rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in [store / "graphs.mdb", folder / "seed111.npz"]}
    again = fetch_dataset("tiny", opts)
    assert again["status"] == "up to date" and again["build_seconds"] == side["build_seconds"]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    # a missing label set is added, not rebuilt
    opts.descriptors = ["wacsfset2", "gmpset2"]
    third = fetch_dataset("tiny", opts)
    assert third["status"] == "completed"
    assert open_store(store).descriptor_names == ["wacsfset2", "gmpset2"]


def test_authors_json_ids_and_targets_stay_aligned(tmp_path, monkeypatch):
    """20 records of the authors' jdft2d file through fetch -> store: every record's id,
    target and structure equal the source record with that id."""
    with gzip.open(shared_file("mdl_jdft2d.json.gz"), "rt") as fh:
        records = json.load(fh)[100:120]
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    path = mirror / "jdft2d_20.json"
    path.write_text(json.dumps(records))
    authors = DATASETS["jdft2d"].source("authors")
    spec = RemoteFile(path.name, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    source = dataclasses.replace(authors, kind="local", files=(spec,), store="jdft2d_20")
    d = dataclasses.replace(DATASETS["jdft2d"], name="jdft2d_20", sources=(source,))
    monkeypatch.setitem(DATASETS, "jdft2d_20", d)
    opts = MakeOptions(
        out=tmp_path / "stores",
        from_dirs=[mirror],
        offline=True,
        jobs=1,
        descriptors=[],
        progress=False,
        log=lambda line: None,
    )
    row = fetch_dataset("jdft2d_20", opts)
    assert row["records"] == 20 and row["target"] == "y"
    s = open_store(tmp_path / "stores" / "jdft2d_20.lmdb")
    by_id = {r["structure_id"]: r for r in records}
    assert sorted(s.get(i, descriptors=[])["id"] for i in range(20)) == sorted(by_id)
    for i in range(20):
        rec = s.get(i, descriptors=[])
        src = by_id[rec["id"]]
        assert rec["targets"][0] == src["y"][0]
        np.testing.assert_array_equal(rec["pos"], np.asarray(src["positions"]))
        np.testing.assert_array_equal(rec["cell"], np.asarray(src["cell"]))
        np.testing.assert_array_equal(rec["z"], src["atomic_numbers"])


def test_a_store_from_other_data_is_refused(tiny, tmp_path):
    d, opts = tiny
    fetch_dataset("tiny", opts)
    other = _tiny_dataset(tmp_path, rows=12)  # rewrites the mirror file: other content
    DATASETS["tiny"] = other
    with pytest.raises(BuildError, match="--overwrite"):
        fetch_dataset("tiny", opts)
    opts.overwrite = True
    assert fetch_dataset("tiny", opts)["records"] == 12


def test_missing_datasets_say_how_to_get_them(tmp_path):
    opts = MakeOptions(
        out=tmp_path / "stores", cache=tmp_path / "cache", offline=True, log=lambda s: None
    )
    with pytest.raises(NotAvailable) as err:
        resolve(DATASETS["qmof"], opts)
    assert registry.MDL_RAW + "data/MOF/data.json" in str(err.value)
    rows = make_datasets(opts, only=["qmof", "mp_relaxed"])
    assert [r["status"] for r in rows] == ["missing", "missing"]
    table = summary_table(rows)
    assert "figshare.com/ndownloader/files/37587100" in table and "MP_API_KEY" in table


@needs_shared
def test_offline_resolution_uses_the_local_copies(tmp_path):
    opts = MakeOptions(out=tmp_path, offline=True, from_dirs=[SHARED], log=lambda s: None)
    got = {n: resolve(DATASETS[n], opts).source.name for n in DATASETS if n != "surface"}
    assert got == {
        "jdft2d": "authors",
        "phonons": "authors",
        "c2db": "authors",
        "qmof": "qmof-cif",
        "dielectric": "dielectric2017",
        "log_gvrh": "mp2018-elastic",
        "log_kvrh": "mp2018-elastic",
        "perovskites": "perov5",
        "mp_gap": "mp2018",
        "mp_e_form": "mp2018",
        "mp_relaxed": "mpf-subset",
    }
    with pytest.raises(NotAvailable):
        resolve(DATASETS["surface"], opts)


def test_the_shared_stand_ins_are_registered_with_their_facts():
    """Which target column of each new stand-in is each task's label (the row counts are
    checked against the files in test_local_copies_are_the_registered_ones)."""
    expected = {  # dataset -> (source, target column)
        "mp_relaxed": ("mpf-subset", None),
        "qmof": ("qmof-cif", "band_gap"),
        "mp_e_form": ("mp2018", "e_form_megnet"),
        "mp_gap": ("mp2018", "gap_pbe_megnet"),
        "log_kvrh": ("mp2018-elastic", "log10_K_VRH"),
        "log_gvrh": ("mp2018-elastic", "log10_G_VRH"),
        "dielectric": ("dielectric2017", "n"),
    }
    for name, (source_name, target) in expected.items():
        d = DATASETS[name]
        source = d.source(source_name)
        assert d.target_of(source) == target, name
        assert source.subset == (name != "qmof"), name
        assert source.store not in {s.store for s in d.sources if s is not source}, name


def test_make_datasets_also_builds_the_other_local_stand_ins(tmp_path, monkeypatch):
    """A dataset with two local stand-ins: the preferred one is chosen, the other is built too
    (experiments that ran on it keep their store)."""
    first = _tiny_dataset(tmp_path, rows=6)
    (tiny_source,) = first.sources
    second = dataclasses.replace(tiny_source, name="tiny-b", store="tiny_perov_b", subset=True)
    first_sub = dataclasses.replace(tiny_source, subset=True)
    d = dataclasses.replace(first, sources=(first_sub, second))
    monkeypatch.setitem(DATASETS, "tiny", d)
    opts = MakeOptions(
        out=tmp_path / "stores",
        cache=tmp_path / "cache",
        from_dirs=[tmp_path / "mirror"],
        offline=True,
        jobs=1,
        descriptors=[],
        progress=False,
        log=lambda line: None,
    )
    rows = make_datasets(opts, only=["tiny"])
    assert [(r["source"], r["status"]) for r in rows] == [("tiny", "built"), ("tiny-b", "built")]
    for store in ("tiny_perov", "tiny_perov_b"):
        assert len(open_store(opts.out / f"{store}.lmdb")) == 6
    rows = make_datasets(opts, only=["tiny"])  # a re-run: both up to date
    assert [r["status"] for r in rows] == ["up to date", "up to date"]


@needs_shared
def test_cli_lists_the_registry(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fingerprint_pretrain.builder.cli",
            "datasets",
            "--from-dir",
            str(SHARED),
            "-v",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in DATASETS:
        assert re.search(rf"^{name}\s", result.stdout, re.M), name
    assert "files 1/1 here" in result.stdout and "ml.materialsproject.org" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "fingerprint_pretrain.builder.cli", "fetch", "nope", "--offline"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "unknown dataset 'nope'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_mpf_pickles_from_a_mirror_become_a_store(tmp_path):
    """mp_relaxed offline from a mirror holding the two MPF blocks: restricted unpickling ->
    extxyz -> store of the last frames (figshare's md5 cannot be had offline: used with a
    warning)."""
    import pickle

    from tests.builder.test_download import _mpf_block

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    block = _mpf_block()
    (mirror / "mpf_block_0.p").write_bytes(pickle.dumps(dict(list(block.items())[:1])))
    (mirror / "mpf_block_1.p").write_bytes(pickle.dumps(dict(list(block.items())[1:])))
    logs: list[str] = []
    opts = MakeOptions(
        out=tmp_path / "stores",
        cache=tmp_path / "cache",
        from_dirs=[mirror],
        offline=True,
        jobs=1,
        descriptors=[],
        progress=False,
        log=logs.append,
    )
    row = fetch_dataset("mp_relaxed", opts)
    assert row["source"] == "mpf" and row["records"] == 2 and row["target"] is None
    assert any("used without verification" in line for line in logs)
    s = open_store(tmp_path / "stores" / "mp_relaxed.lmdb")
    assert s.target_names == ["mpf_energy"]
    rec = s.get(0, descriptors=[])
    last = block["mp-22865"]["structure"][-1]
    assert rec["id"] == "mp-22865" and rec["targets"][0] == pytest.approx(-6.9)
    np.testing.assert_allclose(rec["pos"], last.cart_coords, atol=1e-7)
    assert s.manifest["sources"][0]["path"].endswith("prepared/mp_relaxed.extxyz.gz")
    assert not (tmp_path / "stores" / "mp_relaxed.splits").exists()  # pre-training: no splits


def test_c2db_database_rows_with_a_work_function(tmp_path):
    import ase
    import ase.db
    from fingerprint_pretrain.builder.datasets.prepare import prepare_c2db
    from fingerprint_pretrain.builder.readers import open_input

    db_path = tmp_path / "c2db.db"
    with ase.db.connect(str(db_path)) as db:
        cell = [[3.2, 0, 0], [-1.6, 2.77, 0], [0, 0, 18.0]]
        atoms = ase.Atoms("MoS2", [[0, 0, 9], [1.6, 0.92, 10.6], [1.6, 0.92, 7.4]], cell=cell)
        atoms.pbc = (True, True, False)
        db.write(atoms, uid="MoS2-abc", workfunction=5.9)
        db.write(atoms, uid="MoS2-nowf")
        db.write(atoms, uid="WS2-def", workfunction=5.2)
    out = tmp_path / "c2db.extxyz.gz"
    assert prepare_c2db([db_path], out, False, lambda s: None)["records"] == 2
    _, _, items, total = open_input(out, "extxyz", ["workfunction"], "uid")
    items = list(items)
    assert total == 2 and [i.record_id for i in items] == ["MoS2-abc", "WS2-def"]
    assert [i.targets for i in items] == [(5.9,), (5.2,)]
    assert items[0].payload["pbc"] == (True, True, False)
