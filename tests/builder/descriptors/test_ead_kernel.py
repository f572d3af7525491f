"""The compiled EAD kernel (``builder.descriptors._ead_kernel``) against the slow reference and
the NumPy paths, for every instruction-set variant this CPU runs; the NumPy fallback against
the EAD tests of ``test_ead.py``.

With ``FP_REQUIRE_KERNEL=1`` (CI on a machine with a C compiler) a kernel that did not build
fails :func:`test_kernel_is_available`; otherwise the kernel tests are skipped when it is absent.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from fingerprint_pretrain.builder.descriptors import ead, ead_kernel
from fingerprint_pretrain.builder.descriptors.registry import REGISTRY
from fingerprint_pretrain.builder.neighbors import NeighbourList, neighbour_list

from tests.builder.descriptors import test_ead
from tests.builder.descriptors.conftest import (
    MP,
    PEROV,
    as_arrays,
    mixed_structures,
    small_real_structure,
)
from tests.builder.descriptors.test_ead import EAD_SETS, TINY, ead_reference
from tests.conftest import REPO, real_structures

ISAS = list(ead_kernel.isas())
REQUIRED = os.environ.get("FP_REQUIRE_KERNEL", "") == "1"
needs_kernel = pytest.mark.skipif(
    not ead_kernel.available(), reason=f"EAD kernel unavailable: {ead_kernel.unavailable_reason()}"
)


def plan_of(params: dict) -> ead_kernel.KernelPlan:
    plan = ead._setup(params["L"], params["etas"], params["rs"], params["rc"])[4]
    assert plan is not None
    return plan


def kernel(z, pos, cell, nl, params, isa) -> np.ndarray:
    return ead_kernel.featurize(z, pos, cell, nl.within(params["rc"]), plan_of(params), isa=isa)


def test_kernel_is_available():
    """Fails under FP_REQUIRE_KERNEL=1 when the extension did not build, is stale or is off."""
    if not ead_kernel.available():
        message = f"compiled EAD kernel unavailable: {ead_kernel.unavailable_reason()}"
        if REQUIRED:
            pytest.fail(message + " (FP_REQUIRE_KERNEL=1)")
        pytest.skip(message)
    assert ISAS and ISAS[0] == "generic"
    assert ead_kernel.ISA in ISAS


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("name", "dataset", "index", "centres"),
    [
        ("eadset1", MP, 0, [0, 5, 11]),
        ("eadset1", PEROV, 3, [0, 1, 4]),
        ("eadset3", MP, 1, [0, 3]),
        ("eadset2", PEROV, 1, [0, 4]),
    ],
)
def test_matches_slow_reference(name, dataset, index, centres, isa):
    z, pos, cell, pbc = as_arrays(real_structures(dataset, index + 1)[index])
    params = REGISTRY[name].params
    ours = kernel(z, pos, cell, neighbour_list(pos, cell, pbc, params["rc"]), params, isa)
    assert ours.shape == (len(z), REGISTRY[name].dim) and ours.dtype == np.float64
    reference = ead_reference(z, pos, cell, **params, centres=centres)
    np.testing.assert_allclose(ours[centres], reference, rtol=1e-12, atol=TINY)


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", EAD_SETS)
def test_matches_numpy_paths(name, isa):
    """Both NumPy evaluations (factorised, direct) on real structures of both datasets; the
    NumPy paths carry ~1e-12 themselves on set 2 (12 Å, η up to 10)."""
    params = REGISTRY[name].params
    for label, (z, pos, cell, pbc) in mixed_structures()[::3]:
        nl = neighbour_list(pos, cell, pbc, params["rc"], sort=False)
        ours = kernel(z, pos, cell, nl, params, isa)
        for method in ("numpy", "direct"):
            expected = ead.featurize(z, pos, cell, pbc, nl, **params, method=method)
            np.testing.assert_allclose(
                ours, expected, rtol=5e-12, atol=TINY, err_msg=f"{label} {method}"
            )


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
def test_steep_gaussians_and_direct_etas(isa):
    """η up to 200 Å⁻² on a 12 Å grid: η = 20 and 60 run the recurrence with blocks anchored in
    their middle (8 shifts, as long as the underflow cap allows for η = 60; η = 20 shares them,
    its anchors the 3rd root of η = 60's... rather η = 60's are η = 20's cubed), η = 200 (not
    even 8 shifts safe) one exp per shift; none loses a Gaussian above e^-600."""
    z, pos, cell, pbc = small_real_structure(PEROV, 4)
    params = {
        "L": 1,
        "etas": [0.5, 20.0, 60.0, 200.0],
        "rs": np.arange(0.0, 12.0, 0.05),
        "rc": 12.0,
    }
    plan = plan_of(params)
    assert plan.shapes[1:] == ((8, 30), (8, 30), (0, 0)) and plan.offsets == (0, 4, 4, 0)
    assert plan.sources == ((-1, 1), (-1, 1), (1, 3), (-1, 1))
    nl = neighbour_list(pos, cell, pbc, 12.0)
    ours = kernel(z, pos, cell, nl, params, isa)
    direct = ead.featurize(z, pos, cell, pbc, nl, **params, method="direct")
    assert np.count_nonzero(direct > TINY) > 0.5 * direct.size
    np.testing.assert_allclose(ours, direct, rtol=1e-10, atol=TINY)
    reference = ead_reference(z, pos, cell, **params, centres=[0, 3])
    np.testing.assert_allclose(ours[[0, 3]], reference, rtol=1e-12, atol=TINY)


@pytest.mark.parametrize(
    "params",
    [
        REGISTRY["eadset2"].params,
        {"L": 1, "etas": [0.5, 20.0, 60.0], "rs": np.arange(0.0, 12.0, 0.05), "rc": 12.0},
    ],
)
def test_plan_tables_give_the_gaussians(params):
    """The plan's anchors R_b, lifts c_b, offsets h, sources and table S rebuild every Gaussian
    of every block, multiplied in the kernel's order: A_b = exp(−η(d − R_b)² + c_b), or for a
    derived η (η = n·η_source) the source's A_b to the n-th power (flushed below DBL_MIN),
    times exp(2ηΔd)^(t−h) (no underflow there) · S[bB + t] = exp(−η(d − Rs[bB + t])²) to 1e-12
    (or both below e^-600) for distances across [0, Rc). Set 2's η are all multiples of η = 1:
    they share the blocks of its steepest η = 10, anchored in their middle (24 shifts, twice as
    long as anchoring at the first shift allows), and only η = 1 evaluates anchor exps."""
    rs, rc = np.asarray(params["rs"]), params["rc"]
    plan = ead._setup(params["L"], params["etas"], params["rs"], rc)[4]
    n_etas, n_rs = len(params["etas"]), len(rs)
    iplan, dplan = plan.iplan, plan.dplan
    scale_stride, anchor_stride = int(iplan[4]), int(iplan[5])
    step = dplan[1]
    start = 2 + n_etas + n_rs + plan.iplan[0] * plan.iplan[1]
    scale = dplan[start : start + n_etas * scale_stride].reshape(n_etas, scale_stride)
    anchors, lifts = dplan[start + n_etas * scale_stride :].reshape(2, n_etas, anchor_stride)
    if params is REGISTRY["eadset2"].params:
        assert plan.shapes == ((24, 10),) * 4 and plan.offsets == (12,) * 4
        assert plan.sources == ((-1, 1), (0, 2), (0, 5), (0, 10))
    d = np.linspace(0.01, rc - 1e-6, 37)[:, None]
    for a, ((length, blocks), offset) in enumerate(zip(plan.shapes, plan.offsets, strict=True)):
        if length == 0:
            continue
        eta = params["etas"][a]
        source, power = plan.sources[a]
        for b in range(blocks):
            t = np.arange(length)
            k = b * length + t
            inside = k < n_rs
            with np.errstate(under="ignore", over="ignore"):
                if source < 0:
                    anchor = np.exp(-eta * (d - anchors[a, b]) ** 2 + lifts[a, b])
                else:
                    assert anchors[a, b] == anchors[source, b]
                    root = params["etas"][source]
                    anchor = np.exp(-root * (d - anchors[a, b]) ** 2 + lifts[source, b]) ** power
                    anchor[anchor < np.finfo(float).tiny] = 0.0
                # in the kernel's order: A_b · P_t (summed over edges), then · S_bt
                ours = (
                    anchor
                    * np.exp(2 * eta * step * d) ** (t - offset)
                    * scale[a, np.minimum(k, scale_stride - 1)]
                )[:, inside]
                exact = np.exp(-eta * (d - rs[k[inside]]) ** 2)
            np.testing.assert_allclose(ours, exact, rtol=1e-12, atol=math.exp(-600))


def test_etas_share_blocks_where_they_are_multiples():
    """η = n·η_r (2 ≤ n ≤ 16) derive their anchors from η_r's, on the block shape of the
    steepest member of the group (the registered sets: one group each; only the root evaluates
    anchor exps); η that are not integer multiples, or too far apart, keep their own blocks."""
    rs, rc = np.arange(0.0, 8.0, 0.05), 8.0
    _, recursion, reduce = ead._monomial_tables(1, rc)

    def plan(etas):
        return ead_kernel.kernel_plan(np.array(etas), rs, rc, recursion, reduce)

    assert plan_of(REGISTRY["eadset1"].params).sources == ((-1, 1), (0, 5))
    assert plan_of(REGISTRY["eadset3"].params).sources == ((-1, 1), (0, 2), (0, 3), (0, 5))
    for etas in ([1.0, 2.0, 3.0, 5.0], [0.5, 1.0, 2.5], [1.0, 10.0]):
        p = plan(etas)
        steepest = ead_kernel.block_shape(max(etas), rs, 0.05, rc)
        assert all(s == -1 or etas[a] == n * etas[s] for a, (s, n) in enumerate(p.sources))
        assert [s for s, _ in p.sources].count(-1) == 1
        assert set(zip(p.shapes, p.offsets, strict=True)) == {
            ((steepest[0], -(-len(rs) // steepest[0])), steepest[1])
        }
    assert plan([1.0, 2.5]).sources == ((-1, 1), (-1, 1))  # 2.5 is no integer multiple of 1
    assert plan([1.0, 17.0]).sources == ((-1, 1), (-1, 1))  # n = 17 > MAX_POWER


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
def test_derived_etas_match_the_reference(isa):
    """The largest power, middle anchors and underflowing Gaussians (η = 1 and 16 = 16·1 on a
    12 Å grid: blocks of 16 anchored at their 8th shift, exponents down to −2300 within Rc)
    against the term-by-term reference and the NumPy path."""
    z, pos, cell, pbc = small_real_structure(PEROV, 3)
    params = {"L": 1, "etas": [1.0, 16.0], "rs": np.arange(0.0, 12.0, 0.05), "rc": 12.0}
    plan = plan_of(params)
    assert plan.sources == ((-1, 1), (0, 16)) and plan.offsets == (8, 8)
    nl = neighbour_list(pos, cell, pbc, 12.0)
    ours = kernel(z, pos, cell, nl, params, isa)
    reference = ead_reference(z, pos, cell, **params, centres=[0, 2])
    np.testing.assert_allclose(ours[[0, 2]], reference, rtol=1e-12, atol=TINY)
    direct = ead.featurize(z, pos, cell, pbc, nl, **params, method="direct")
    np.testing.assert_allclose(ours, direct, rtol=1e-11, atol=TINY)


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "params",
    [
        {"L": 3, "etas": [0.5, 3.0], "rs": [0.0, 1.5, 3.0, 4.5], "rc": 6.0},  # short grid
        {"L": 0, "etas": [2.0], "rs": [0.0, 0.7, 1.1, 2.5, 4.0], "rc": 5.0},  # irregular
        {"L": 2, "etas": [0.3, 4.0], "rs": np.arange(0.5, 7.0, 0.1), "rc": 7.0},  # 65 shifts
    ],
)
def test_other_parameters(params, isa):
    """Orders 0 and 3, irregular and short grids (direct exps), a grid not starting at 0."""
    z, pos, cell, pbc = small_real_structure(PEROV, 2)
    ours = kernel(z, pos, cell, neighbour_list(pos, cell, pbc, params["rc"]), params, isa)
    reference = ead_reference(z, pos, cell, **params, centres=[0, 1, 4])
    np.testing.assert_allclose(ours[[0, 1, 4]], reference, rtol=1e-12, atol=TINY)


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
def test_edge_order_and_lone_atoms(isa):
    """Shuffled edges (sorted by the wrapper) and edges grouped by centre in descending order
    give the same values; an atom without neighbours gets zeros, a wider list is cut to Rc."""
    params = REGISTRY["eadset1"].params
    z, pos, cell, pbc = small_real_structure(MP, 0)
    nl = neighbour_list(pos, cell, pbc, params["rc"], sort=False)
    whole = kernel(z, pos, cell, nl, params, isa)
    rng = np.random.default_rng(0)
    for order in (rng.permutation(nl.num_edges), np.argsort(-nl.edge_index[1], kind="stable")):
        shuffled = NeighbourList(
            nl.edge_index[:, order], nl.edge_shift[order], nl.edge_dist[order], nl.cutoff
        )
        np.testing.assert_allclose(
            kernel(z, pos, cell, shuffled, params, isa), whole, rtol=1e-13, atol=TINY
        )
    wide = neighbour_list(pos, cell, pbc, 9.5, sort=False)
    np.testing.assert_allclose(
        ead.featurize(z, pos, cell, pbc, wide, **params, method="kernel"), whole, rtol=1e-13
    )
    # the extension itself ignores edges at or beyond Rc (the wrapper cuts the list anyway)
    uncut = ead_kernel.featurize(z, pos, cell, wide, plan_of(params), isa=isa)
    np.testing.assert_allclose(uncut, whole, rtol=1e-13, atol=TINY)
    lone_z, lone_pos = np.append(z, 8), np.vstack([pos, pos.max(axis=0) + 30.0])
    box, open_ = cell * 10, np.zeros(3, bool)
    cluster = kernel(z, pos, box, neighbour_list(pos, box, open_, 8.0), params, isa)
    with_lone = kernel(
        lone_z, lone_pos, box, neighbour_list(lone_pos, box, open_, 8.0), params, isa
    )
    assert not with_lone[-1].any()
    np.testing.assert_allclose(with_lone[:-1], cluster, rtol=1e-13, atol=TINY)
    empty = neighbour_list(pos[:1], np.eye(3) * 40.0, open_, 8.0)
    assert empty.num_edges == 0
    alone = kernel(z[:1], pos[:1], np.eye(3) * 40.0, empty, params, isa)
    assert alone.shape == (1, 960) and not alone.any()


# ---------------------------------------------------------------------------------------------
# Dispatch, fallback, loading, argument checks
# ---------------------------------------------------------------------------------------------


@needs_kernel
def test_auto_uses_the_kernel(monkeypatch):
    calls = []
    original = ead_kernel.featurize
    monkeypatch.setattr(ead_kernel, "featurize", lambda *a, **k: calls.append(1) or original(*a))
    z, pos, cell, pbc = small_real_structure(PEROV, 0)
    params = REGISTRY["eadset3"].params
    nl = neighbour_list(pos, cell, pbc, params["rc"])
    auto = ead.featurize(z, pos, cell, pbc, nl, **params)
    assert calls == [1]
    numpy = ead.featurize(z, pos, cell, pbc, nl, **params, method="numpy")
    assert calls == [1]
    np.testing.assert_allclose(auto, numpy, rtol=5e-12, atol=TINY)


def test_unavailable_kernel_falls_back(monkeypatch):
    monkeypatch.setattr(ead_kernel, "_EXTENSION", None)
    monkeypatch.setattr(ead_kernel, "_REASON", "switched off by the test")
    assert not ead_kernel.available()
    z, pos, cell, pbc = small_real_structure(PEROV, 0)
    params = REGISTRY["eadset1"].params
    nl = neighbour_list(pos, cell, pbc, params["rc"])
    auto = ead.featurize(z, pos, cell, pbc, nl, **params)
    numpy = ead.featurize(z, pos, cell, pbc, nl, **params, method="numpy")
    np.testing.assert_array_equal(auto, numpy)
    with pytest.raises(RuntimeError, match="switched off by the test"):
        ead.featurize(z, pos, cell, pbc, nl, **params, method="kernel")
    with pytest.raises(ValueError, match="unknown method"):
        ead.featurize(z, pos, cell, pbc, nl, **params, method="fast")


def test_environment_switch():
    """FP_EAD_KERNEL=0 disables the kernel in a fresh process (the NumPy path runs)."""
    code = (
        "from fingerprint_pretrain.builder.descriptors import ead_kernel as k; "
        "print(k.available(), k.unavailable_reason())"
    )
    env = {**os.environ, "FP_EAD_KERNEL": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("False disabled by FP_EAD_KERNEL=0")


@needs_kernel
def test_stale_build_is_refused(monkeypatch, tmp_path):
    """A build older than _ead_kernel.c (source hash compiled in by setup.py) is not used."""
    if not ead_kernel._EXTENSION.SOURCE_HASH:
        pytest.skip("built without setup.py (no source hash)")
    assert ead_kernel._load()[0] is not None
    changed = tmp_path / "_ead_kernel.c"
    changed.write_bytes(ead_kernel._SOURCE.read_bytes() + b"\n")
    monkeypatch.setattr(ead_kernel, "_SOURCE", changed)
    extension, reason = ead_kernel._load()
    assert extension is None and "stale build" in reason


@needs_kernel
def test_extension_checks_its_arguments():
    from fingerprint_pretrain.builder.descriptors import _ead_kernel

    params = REGISTRY["eadset3"].params
    plan = plan_of(params)
    z, pos, cell, pbc = small_real_structure(PEROV, 0)
    nl = neighbour_list(pos, cell, pbc, params["rc"])
    out = np.empty((len(z), plan.n_features))
    args = [z, pos, cell, nl.edge_index, nl.edge_shift, nl.edge_dist, plan.iplan, plan.dplan]
    assert _ead_kernel.featurize(*args, out, -1) == 0
    bad_index = nl.edge_index.copy()
    bad_index[0, 3] = len(z)
    with pytest.raises(ValueError, match="out of range"):
        _ead_kernel.featurize(*args[:3], bad_index, *args[4:], out, -1)
    with pytest.raises(TypeError, match="float64"):
        _ead_kernel.featurize(*args[:5], nl.edge_dist.astype(np.float32), *args[6:], out, -1)
    with pytest.raises(ValueError, match="malformed plan"):
        _ead_kernel.featurize(*args[:6], plan.iplan[:-1].copy(), plan.dplan, out, -1)
    with pytest.raises(ValueError, match="sizes"):
        _ead_kernel.featurize(*args, out[:-1], -1)
    with pytest.raises(ValueError, match="contiguous"):
        _ead_kernel.featurize(*args, out[:, ::2], -1)
    with pytest.raises(ValueError, match="instruction set"):
        _ead_kernel.featurize(*args, out, 7)


# ---------------------------------------------------------------------------------------------
# The EAD tests of test_ead.py once more on the NumPy fallback (test_ead.py itself runs the
# default method, i.e. the kernel wherever it is built)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _numpy_for_the_tests_of_test_ead(request, monkeypatch):
    """The tests below that come from test_ead.py run with the kernel switched off."""
    if request.function.__module__ == test_ead.__name__:
        monkeypatch.setattr(ead_kernel, "available", lambda: False)


test_numpy_matches_slow_reference = test_ead.test_matches_slow_reference
test_numpy_l0_block_is_wacsf_squared = test_ead.test_l0_block_is_wacsf_squared
test_numpy_factorised_equals_direct = test_ead.test_factorised_equals_direct
test_numpy_general_l_matches_reference = test_ead.test_general_l_matches_reference
test_numpy_isolated_atom_gets_zeros = test_ead.test_isolated_atom_gets_zeros
test_numpy_matches_pyxtal_ff = test_ead.test_matches_pyxtal_ff
test_numpy_blocks_of_centres_and_lone_atoms = test_ead.test_blocks_of_centres_and_lone_atoms
