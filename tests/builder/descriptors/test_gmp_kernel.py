"""The compiled GMP kernel (``builder.descriptors._gmp_kernel``) against the NumPy path (the
slow reference) for every instruction-set variant this CPU runs, and against the independent
references of ``test_gmp.py`` (NaCl values, frozen GMP-featurizer values, the grid oracle),
which are also rerun here on the NumPy fallback with the kernel switched off.

With ``FP_REQUIRE_KERNEL=1`` (CI on a machine with a C compiler) a kernel that did not build
fails :func:`test_kernel_is_available`; otherwise the kernel tests are skipped when it is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from fingerprint_pretrain.builder.descriptors import gmp, gmp_kernel
from fingerprint_pretrain.builder.neighbors import NeighbourList, neighbour_list

from tests.builder.descriptors import test_gmp
from tests.builder.descriptors.conftest import MP, PEROV, as_arrays, mixed_structures
from tests.builder.descriptors.test_gmp import GMP_NAMES, gmp_params
from tests.conftest import REPO, real_structures

ISAS = list(gmp_kernel.isas())
REQUIRED = os.environ.get("FP_REQUIRE_KERNEL", "") == "1"
needs_kernel = pytest.mark.skipif(
    not gmp_kernel.available(), reason=f"GMP kernel unavailable: {gmp_kernel.unavailable_reason()}"
)


def features(z, pos, cell, nl, params, method, isa=None, monkeypatch=None) -> np.ndarray:
    if isa is not None:
        monkeypatch.setattr(gmp_kernel, "ISA", isa)
    return gmp.featurize(z, pos, cell, np.ones(3, bool), nl, method=method, **params)


def assert_close(ours, reference, tol=1e-12):
    """|ours − reference| ≤ tol × the atom's largest feature (invariants that vanish by symmetry
    are rounding noise of ~1e-16 in both)."""
    assert ours.shape == reference.shape
    scale = np.maximum(np.abs(reference).max(axis=1, keepdims=True), 1e-300)
    assert (np.abs(ours - reference) / scale).max() <= tol


def test_kernel_is_available():
    """Fails under FP_REQUIRE_KERNEL=1 when the extension did not build, is stale or is off."""
    if not gmp_kernel.available():
        message = f"compiled GMP kernel unavailable: {gmp_kernel.unavailable_reason()}"
        if REQUIRED:
            pytest.fail(message + " (FP_REQUIRE_KERNEL=1)")
        pytest.skip(message)
    assert ISAS and ISAS[0] == "generic"
    assert gmp_kernel.ISA in ISAS


# ---------------------------------------------------------------------------------------------
# Kernel == NumPy path
# ---------------------------------------------------------------------------------------------


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", GMP_NAMES)
def test_matches_numpy_path(name, isa, monkeypatch):
    """Real structures of both datasets, neighbour lists at the elements' radius, engine order."""
    params = gmp_params(name)
    for label, (z, pos, cell, pbc) in mixed_structures()[::3]:
        nl = neighbour_list(pos, cell, pbc, gmp.required_radius(elements=z, **params), sort=False)
        ours = features(z, pos, cell, nl, params, "kernel", isa, monkeypatch)
        expected = features(z, pos, cell, nl, params, "numpy")
        assert ours.dtype == np.float64, label
        assert_close(ours, expected)


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "params",
    [
        {"orders": [-1], "sigmas": []},  # density only: no σ slots, no moments
        {"orders": [0], "sigmas": [0.4, 1.3]},  # no density, no moments
        {"orders": [-1, 3], "sigmas": [0.5, 1.0]},  # orders 1, 2 computed but not output
        {"orders": [2, 4], "sigmas": [0.25], "overlap_threshold": 1e-10},
        {**gmp_params("gmpset3"), "periodic": False},  # the authors' finite cluster
    ],
)
def test_other_parameters(params, isa, monkeypatch):
    z, pos, cell, pbc = as_arrays(real_structures(MP, 2)[1])
    nl = neighbour_list(pos, cell, pbc, gmp.required_radius(elements=z, **params))
    ours = features(z, pos, cell, nl, params, "kernel", isa, monkeypatch)
    assert ours.shape == (len(z), len(gmp.feature_names(**params)))
    assert_close(ours, features(z, pos, cell, nl, params, "numpy"))


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
def test_edge_order_wide_lists_and_lone_atoms(isa, monkeypatch):
    """Shuffled edges and centres in descending order give the same values; a wider list is
    cut exactly (same values bit for bit); an atom without neighbours has only its self-term."""
    params = gmp_params("gmpset1")
    z, pos, cell, pbc = as_arrays(real_structures(PEROV, 3)[2])
    radius = gmp.required_radius(elements=z, **params)
    nl = neighbour_list(pos, cell, pbc, radius)  # nearest first: a prefix of the wider list's
    whole = features(z, pos, cell, nl, params, "kernel", isa, monkeypatch)
    rng = np.random.default_rng(0)
    for order in (rng.permutation(nl.num_edges), np.argsort(-nl.edge_index[1], kind="stable")):
        shuffled = NeighbourList(
            nl.edge_index[:, order], nl.edge_shift[order], nl.edge_dist[order], nl.cutoff
        )
        assert_close(features(z, pos, cell, shuffled, params, "kernel"), whole, 1e-13)
    wide = neighbour_list(pos, cell, pbc, radius + 5.0)
    np.testing.assert_array_equal(features(z, pos, cell, wide, params, "kernel"), whole)
    box = np.eye(3) * 200.0
    lone_z, lone_pos = np.array([26, 8]), np.array([[0.0, 0.0, 0.0], [100.0, 100.0, 100.0]])
    lone_nl = neighbour_list(lone_pos, box, np.zeros(3, bool), radius)
    assert lone_nl.num_edges == 0
    lone = features(lone_z, lone_pos, box, lone_nl, params, "kernel")
    assert_close(lone, features(lone_z, lone_pos, box, lone_nl, params, "numpy"), 1e-15)
    assert np.all(lone[:, 5:] == 0) and np.all(lone[:, :5] > 0)


# ---------------------------------------------------------------------------------------------
# Independent references, on the kernel and on the NumPy fallback
# ---------------------------------------------------------------------------------------------

REFERENCE_TESTS = [
    ("nacl", lambda: test_gmp.test_nacl_reference_values()),
    *(
        (f"gmpfeaturizer-{key[0]}-{key[1]}-{key[2]}",
         lambda key=key: test_gmp.test_against_gmpfeaturizer_values(*key))
        for key in test_gmp.GMPFEATURIZER
    ),
    ("grid-nacl", lambda: test_gmp.test_grid_oracle_nacl_set1()),
    ("grid-cluster", lambda: test_gmp.test_grid_oracle_cluster_mode()),
    ("isolated-atom", lambda: test_gmp.test_isolated_atom_is_its_own_density()),
    ("cell-independence", lambda: test_gmp.test_periodic_features_do_not_depend_on_the_cell()),
]  # fmt: skip


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "check", [c for _, c in REFERENCE_TESTS], ids=[n for n, _ in REFERENCE_TESTS]
)
def test_kernel_matches_independent_references(check, isa, monkeypatch):
    """test_gmp.py's reference checks, forced through the kernel (each ISA)."""
    calls = []
    original = gmp_kernel.featurize
    monkeypatch.setattr(gmp_kernel, "ISA", isa)
    monkeypatch.setattr(
        gmp_kernel, "featurize", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    check()
    assert calls  # the kernel did run


@pytest.mark.parametrize(
    "check", [c for _, c in REFERENCE_TESTS], ids=[n for n, _ in REFERENCE_TESTS]
)
def test_numpy_fallback_matches_independent_references(check, monkeypatch):
    """The same checks with the kernel unavailable (the NumPy path, as on a machine without a
    C compiler)."""
    monkeypatch.setattr(gmp_kernel, "_EXTENSION", None)
    monkeypatch.setattr(gmp_kernel, "_REASON", "switched off by the test")
    assert not gmp_kernel.available()
    check()


# ---------------------------------------------------------------------------------------------
# Dispatch, fallback, loading, argument checks
# ---------------------------------------------------------------------------------------------


def test_unavailable_kernel_falls_back(monkeypatch):
    monkeypatch.setattr(gmp_kernel, "_EXTENSION", None)
    monkeypatch.setattr(gmp_kernel, "_REASON", "switched off by the test")
    params = gmp_params("gmpset2")
    z, pos, cell, pbc = as_arrays(real_structures(PEROV, 1)[0])
    nl = neighbour_list(pos, cell, pbc, gmp.required_radius(**params))
    auto = features(z, pos, cell, nl, params, "auto")
    np.testing.assert_array_equal(auto, features(z, pos, cell, nl, params, "numpy"))
    with pytest.raises(RuntimeError, match="switched off by the test"):
        features(z, pos, cell, nl, params, "kernel")
    with pytest.raises(ValueError, match="method must be one of"):
        features(z, pos, cell, nl, params, "fast")


@needs_kernel
def test_auto_uses_the_kernel(monkeypatch):
    calls = []
    original = gmp_kernel.featurize
    monkeypatch.setattr(
        gmp_kernel, "featurize", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    params = gmp_params("gmpset2")
    z, pos, cell, pbc = as_arrays(real_structures(PEROV, 1)[0])
    nl = neighbour_list(pos, cell, pbc, gmp.required_radius(**params))
    features(z, pos, cell, nl, params, "auto")
    assert calls == [1]
    features(z, pos, cell, nl, params, "numpy")
    assert calls == [1]


def test_environment_switch():
    """FP_GMP_KERNEL=0 disables the kernel in a fresh process."""
    code = (
        "from fingerprint_pretrain.builder.descriptors import gmp_kernel as k; "
        "print(k.available(), k.unavailable_reason())"
    )
    env = {**os.environ, "FP_GMP_KERNEL": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("False disabled by FP_GMP_KERNEL=0")


@needs_kernel
def test_stale_build_is_refused(monkeypatch, tmp_path):
    """A build older than _gmp_kernel.c (source hash compiled in by setup.py) is not used."""
    if not gmp_kernel._EXTENSION.SOURCE_HASH:
        pytest.skip("built without setup.py (no source hash)")
    assert gmp_kernel._load()[0] is not None
    changed = tmp_path / "_gmp_kernel.c"
    changed.write_bytes(gmp_kernel._SOURCE.read_bytes() + b"\n")
    monkeypatch.setattr(gmp_kernel, "_SOURCE", changed)
    extension, reason = gmp_kernel._load()
    assert extension is None and "stale build" in reason


@needs_kernel
def test_extension_checks_its_arguments():
    params = gmp_params("gmpset2")
    z, pos, cell, pbc = as_arrays(real_structures(PEROV, 1)[0])
    nl = neighbour_list(pos, cell, pbc, gmp.required_radius(**params))
    plan_params, _ = gmp._plan_for(dict(params))
    elements = tuple(np.unique(z).tolist())
    plan = gmp._kernel_plan(plan_params, elements)
    rank = np.searchsorted(elements, z)
    gmp_kernel.featurize(rank, pos, cell, nl, plan)  # valid
    bad_edges = NeighbourList(nl.edge_index + len(z), nl.edge_shift, nl.edge_dist, nl.cutoff)
    with pytest.raises(ValueError, match="atom index out of range"):
        gmp_kernel.featurize(rank, pos, cell, bad_edges, plan)
    with pytest.raises(ValueError, match="atom index out of range"):
        gmp_kernel.featurize(rank + len(elements), pos, cell, nl, plan)
    truncated = gmp_kernel.KernelPlan(plan.iplan[:-1], plan.dplan, plan.n_features)
    with pytest.raises(ValueError, match="malformed plan"):
        gmp_kernel.featurize(rank, pos, cell, nl, truncated)
    with pytest.raises(ValueError, match="inconsistent array sizes"):
        gmp_kernel.featurize(rank, pos[:-1], cell, nl, plan)
