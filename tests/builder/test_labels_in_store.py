"""Label sets in stores: computed while building or added later (same content), resumable
``add``, statistics checked against NumPy over the stored arrays, float16 and compression."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fingerprint_pretrain.builder.add import add_descriptors
from fingerprint_pretrain.builder.build import BuildError
from fingerprint_pretrain.builder.descriptors.registry import get
from fingerprint_pretrain.builder.export import export_zarr
from fingerprint_pretrain.builder.info import verify_store
from fingerprint_pretrain.builder.neighbors import neighbour_list
from fingerprint_pretrain.schemas import open_store

from tests.builder.helpers import PEROV_SAMPLE, build

PEROV = {"id_column": "castelli_id", "targets": ["heat_all"]}
CODECS = {"eadset1": "shuffle-zlib", "eadset2": "shuffle-zlib"}


@pytest.fixture(scope="module")
def graph_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("labels") / "graphs.lmdb"
    build(out, PEROV_SAMPLE, **PEROV)
    return out


@pytest.fixture(scope="module")
def built_with_labels(tmp_path_factory):
    out = tmp_path_factory.mktemp("labels") / "labels.lmdb"
    build(
        out,
        PEROV_SAMPLE,
        **PEROV,
        descriptors=["wacsfset1", "eadset2"],
        descriptor_codec=CODECS,
        jobs=2,
        chunk_size=7,
    )
    return out


def copy_store(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_labels_equal_direct_computation_with_the_right_radius(built_with_labels):
    store = open_store(built_with_labels)
    assert store.descriptor_names == ["wacsfset1", "eadset2"]
    for i in (0, 17, 39):
        rec = store[i]
        for name in ("wacsfset1", "eadset2"):
            spec = get(name)
            # an independent, fresh neighbour list of exactly the set's radius (12 Å for eadset2,
            # wider than the store's 8 Å graph)
            nl = neighbour_list(rec["pos"], rec["cell"], rec["pbc"], spec.radius)
            expected = spec.compute(rec["z"], rec["pos"], rec["cell"], rec["pbc"], nl)
            assert rec[name].shape == (len(rec["z"]), spec.dim) and rec[name].dtype == np.float32
            np.testing.assert_allclose(
                rec[name], expected.astype(np.float32), rtol=1e-6, atol=1e-30
            )


def test_manifest_statistics_match_numpy(built_with_labels):
    store = open_store(built_with_labels)
    for name in store.descriptor_names:
        values = np.concatenate([r[name] for r in store]).astype(np.float64)
        stats = store.manifest["descriptors"][name]["stats"]
        assert stats["count"] == len(values) == store.manifest["counts"]["atoms"]
        np.testing.assert_allclose(stats["mean"], values.mean(axis=0), rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(stats["std"], values.std(axis=0), rtol=1e-7, atol=1e-300)
        np.testing.assert_array_equal(stats["min"], values.min(axis=0))
        np.testing.assert_array_equal(stats["max"], values.max(axis=0))
        entry = store.manifest["descriptors"][name]
        assert entry["feature_names"] == list(get(name).feature_names)
        assert entry["params"] == get(name).params and entry["dim"] == get(name).dim


def test_add_later_gives_the_same_store_as_building_with_labels(
    graph_store, built_with_labels, tmp_path
):
    store = copy_store(graph_store, tmp_path / "s.lmdb")
    before = open_store(store).manifest
    m = add_descriptors(store, ["eadset2", "wacsfset1"], jobs=2, codec=CODECS, progress=False)
    assert m["graphs_hash"] == before["graphs_hash"]  # graphs untouched
    assert m["content_hash"] == open_store(built_with_labels).content_hash
    ok, lines = verify_store(store, progress=False)
    assert ok, lines


def test_add_is_a_noop_when_present_unless_forced(built_with_labels, tmp_path):
    store = copy_store(built_with_labels, tmp_path / "s.lmdb")
    manifest_text = (store / "manifest.json").read_text()
    add_descriptors(store, ["wacsfset1"], jobs=1, progress=False)
    assert (store / "manifest.json").read_text() == manifest_text
    m = add_descriptors(store, ["wacsfset1"], jobs=1, force=True, progress=False)
    assert m["content_hash"] == json.loads(manifest_text)["content_hash"]  # same values again


def test_interrupted_add_is_invisible_then_resumes(graph_store, built_with_labels, tmp_path):
    store = copy_store(graph_store, tmp_path / "s.lmdb")
    add_descriptors(store, ["wacsfset1"], jobs=1, chunk_size=5, stop_after_chunks=2, progress=False)
    partial = open_store(store)
    assert partial.descriptor_names == []  # not listed until complete
    assert verify_store(store, progress=False)[0]
    m = add_descriptors(store, ["wacsfset1"], jobs=2, chunk_size=3, progress=False)
    full = open_store(built_with_labels)
    assert (
        m["descriptors"]["wacsfset1"]["hash"] == full.manifest["descriptors"]["wacsfset1"]["hash"]
    )
    for a, b in zip(open_store(store), full):
        np.testing.assert_array_equal(a["wacsfset1"], b["wacsfset1"])


def test_float16_reports_its_error_and_refuses_overflow(graph_store, tmp_path):
    store = copy_store(graph_store, tmp_path / "s.lmdb")
    m = add_descriptors(store, ["wacsfset2"], dtype="float16", jobs=1, progress=False)
    entry = m["descriptors"]["wacsfset2"]
    assert entry["dtype"] == "float16" and entry["cast_error"]["overflow"] == 0
    assert 0 < entry["cast_error"]["max_rel"] <= 2.0**-11  # float16 has an 11-bit significand
    rec = open_store(store)[0]
    spec = get("wacsfset2")
    exact = spec.compute(
        rec["z"],
        rec["pos"],
        rec["cell"],
        rec["pbc"],
        neighbour_list(rec["pos"], rec["cell"], rec["pbc"], spec.radius),
    )
    measured = np.max(np.abs(rec["wacsfset2"] - exact) / np.maximum(np.abs(exact), 1e-300))
    assert measured <= entry["cast_error"]["max_rel"] * (1 + 1e-9)
    # raw EAD values reach ~1e5, beyond float16's 65,504
    with pytest.raises(BuildError, match="exceed the float16 range"):
        add_descriptors(store, ["eadset1"], dtype="float16", jobs=1, progress=False)
    assert "eadset1" not in open_store(store).descriptor_names


def test_compression_shrinks_ead_and_zarr_keeps_labels(built_with_labels, tmp_path):
    m = open_store(built_with_labels).manifest
    ead = m["descriptors"]["eadset2"]
    assert ead["codec"] == "shuffle-zlib"
    raw_bytes = m["counts"]["atoms"] * ead["dim"] * 4
    assert ead["stored_bytes"] < 0.8 * raw_bytes
    assert ead["bytes_per_atom"] == pytest.approx(ead["stored_bytes"] / m["counts"]["atoms"])
    twin = open_store(
        export_zarr(open_store(built_with_labels), tmp_path / "t.zarr", progress=False)
    )
    assert twin.content_hash == m["content_hash"]
    for a, b in zip(open_store(built_with_labels), twin):
        np.testing.assert_array_equal(a["eadset2"], b["eadset2"])
    assert verify_store(tmp_path / "t.zarr", progress=False)[0]
