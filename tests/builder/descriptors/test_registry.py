"""The registry of the nine label sets: names, parameters (paper Table 3), lookups, laziness."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from fingerprint_pretrain.builder.descriptors import registry
from fingerprint_pretrain.builder.descriptors.registry import (
    REGISTRY,
    DescriptorSpec,
    get,
    resolve,
    resolve_names,
)
from fingerprint_pretrain.builder.neighbors import neighbour_list

from tests.builder.descriptors.conftest import small_real_structure
from tests.conftest import REPO

EXPECTED_DIMS = {
    "wacsfset1": 48,
    "wacsfset2": 20,
    "wacsfset3": 140,
    "gmpset1": 13,
    "gmpset2": 10,
    "gmpset3": 31,
    "eadset1": 960,
    "eadset2": 1920,
    "eadset3": 1280,
}


def test_exactly_the_nine_sets():
    assert list(REGISTRY) == list(EXPECTED_DIMS)
    for name, spec in REGISTRY.items():
        assert isinstance(spec, DescriptorSpec) and spec.name == name
        assert spec.family == name[: -len("set1")]
        json.dumps(spec.params)  # JSON-serialisable


@pytest.mark.parametrize("name", [n for n in EXPECTED_DIMS if not n.startswith("gmp")])
def test_dims_names_and_radius(name):
    spec = REGISTRY[name]
    assert spec.dim == EXPECTED_DIMS[name] == len(spec.feature_names)
    assert len(set(spec.feature_names)) == spec.dim
    assert spec.radius == spec.params["rc"]
    z, pos, cell, pbc = small_real_structure()
    values = spec.compute(z, pos, cell, pbc, neighbour_list(pos, cell, pbc, spec.radius))
    assert values.shape == (len(z), spec.dim) and values.dtype == np.float64


def test_table3_parameters():
    p = {name: spec.params for name, spec in REGISTRY.items()}
    assert p["wacsfset1"]["rs"] == [0, 1, 2, 3, 4, 6, 8, 10]
    assert p["wacsfset1"]["etas"] == [0.01, 0.1, 0.4, 1.0, 3.5, 5.0]
    assert p["wacsfset2"]["rs"] == [0, 1, 2, 3, 4]
    assert p["wacsfset2"]["etas"] == [0.01, 0.1, 0.4, 1.0]
    assert p["wacsfset3"]["rs"] == [0, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 9, 10]
    assert len(p["wacsfset3"]["rs"]) == 14 and len(p["wacsfset3"]["etas"]) == 10
    assert p["wacsfset3"]["etas"] == [0.01, 0.06, 0.1, 0.2, 0.4, 0.7, 1.0, 2.0, 3.5, 5.0]
    assert all(p[f"wacsfset{k}"]["rc"] == 8.0 for k in (1, 2, 3))
    for k, (max_l, etas, stop) in enumerate(
        [(2, [1, 5], 8.0), (1, [1, 2, 5, 10], 12.0), (1, [1, 2, 3, 5], 8.0)], start=1
    ):
        ead = p[f"eadset{k}"]
        assert (ead["L"], ead["etas"], ead["rc"]) == (max_l, etas, stop)
        assert ead["rs"] == np.arange(0.0, stop, 0.05).tolist()  # endpoint excluded
    for k, (orders, stop, count) in enumerate(
        [([-1, 0, 1, 2], 2.0, 4), ([-1, 0, 1, 2], 0.3, 3), ([-1, 0, 1, 2, 3, 4], 1.0, 6)], start=1
    ):
        gmp = p[f"gmpset{k}"]
        assert gmp["orders"] == orders
        np.testing.assert_array_equal(gmp["sigmas"], np.linspace(0, stop, count + 1)[1:])
        assert gmp["periodic"] is True


def test_gmp_sets_dims_and_radius():
    for name in ("gmpset1", "gmpset2", "gmpset3"):
        spec = REGISTRY[name]
        assert spec.dim == EXPECTED_DIMS[name] == len(spec.feature_names)
        assert spec.radius > 0


def test_get_unknown_lists_known_names():
    assert get("eadset1") is REGISTRY["eadset1"]
    with pytest.raises(KeyError) as info:
        get("eadset4")
    message = str(info.value)
    assert "eadset4" in message and all(name in message for name in REGISTRY)
    assert isinstance(info.value, registry.UnknownDescriptorError)


def test_resolve():
    assert [s.name for s in resolve("all")] == list(REGISTRY)
    assert [s.name for s in resolve(["all", "eadset1"])] == list(REGISTRY)
    assert [s.name for s in resolve("eadset2,wacsfset1")] == ["wacsfset1", "eadset2"]
    assert [s.name for s in resolve(["ead"])] == ["eadset1", "eadset2", "eadset3"]
    assert [s.name for s in resolve(["wacsfset1", "wacsfset1"])] == ["wacsfset1"]
    assert resolve([]) == []
    with pytest.raises(KeyError, match="known"):
        resolve(["wacsfset1", "nope"])


def test_resolve_names():
    assert resolve_names(("eadset2", "wacsf")) == ["wacsfset1", "wacsfset2", "wacsfset3", "eadset2"]
    assert resolve_names(()) == [] == resolve_names([])
    with pytest.raises(KeyError, match="known"):
        resolve_names(("nope",))


def test_spec_is_frozen_and_hashable():
    spec = REGISTRY["wacsfset1"]
    with pytest.raises(AttributeError):
        spec.name = "other"
    assert hash(spec) == hash(DescriptorSpec("wacsfset1", "wacsf", {}))


def test_importing_the_registry_imports_no_family_module():
    """Family modules load on first use, so a broken or absent family cannot break the registry."""
    code = (
        "import sys, fingerprint_pretrain.builder.descriptors.registry as r; "
        "print(sorted(m for m in sys.modules "
        "if m.startswith('fingerprint_pretrain.builder.descriptors.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "['fingerprint_pretrain.builder.descriptors.registry']"


def test_auto_codec_compresses_the_wide_sets_with_zstd_and_stores_narrow_ones_raw():
    names = registry.resolve_names("all")
    auto = registry.storage_codecs(names)
    dims = {name: registry.get(name).dim for name in names}
    # the EAD sets (960, 1,920 and 1,280 features) are the only ones of the nine with >= 256
    assert {n for n, d in dims.items() if d >= 256} == {"eadset1", "eadset2", "eadset3"}
    assert auto == {n: "shuffle-zstd" if dims[n] >= 256 else "raw" for n in names}
    assert registry.storage_codecs(names, "shuffle-zlib") == dict.fromkeys(names, "shuffle-zlib")


def test_auto_codec_store_reads_back_the_exact_labels(tmp_path):
    """A wide set stored with the auto codec decodes to the very float32 values written."""
    from fingerprint_pretrain.schemas.record import decode_record, encode_record

    labels = np.random.default_rng(0).lognormal(0, 6, (7, 1920)).astype(np.float32)
    codec = registry.storage_codecs(["eadset2"])
    blob = encode_record("x", {"eadset2": labels}, codec)
    assert np.array_equal(decode_record(blob)["eadset2"], labels)
    assert len(blob) < labels.nbytes
