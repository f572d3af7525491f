"""The compiled wACSF kernel (``builder.descriptors._wacsf_kernel``) against a slow, obvious
per-edge reference and DScribe, for every instruction-set variant this CPU runs; its dispatch,
fallback and loading.

The reference enumerates periodic images by brute force (no :mod:`builder.neighbors`) and sums
Z_j f_c(d) exp(−η (d − Rs)²) one edge and one term at a time with ``math``.

With ``FP_REQUIRE_KERNEL=1`` (CI on a machine with a C compiler) a kernel that did not build
fails :func:`test_kernel_is_available`; otherwise the kernel tests are skipped when it is absent.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from fingerprint_pretrain.builder.descriptors import wacsf, wacsf_kernel
from fingerprint_pretrain.builder.descriptors.registry import REGISTRY
from fingerprint_pretrain.builder.neighbors import NeighbourList, neighbour_list

from tests.builder.descriptors.conftest import (
    MP,
    PEROV,
    brute_force_neighbours,
    small_real_structure,
)
from tests.builder.descriptors.test_wacsf import dscribe_wacsf
from tests.conftest import REPO

WACSF_SETS = [name for name, spec in REGISTRY.items() if spec.family == "wacsf"]
ISAS = list(wacsf_kernel.isas())
REQUIRED = os.environ.get("FP_REQUIRE_KERNEL", "") == "1"
needs_kernel = pytest.mark.skipif(
    not wacsf_kernel.available(),
    reason=f"wACSF kernel unavailable: {wacsf_kernel.unavailable_reason()}",
)
# Agreement with the per-edge reference, relative, on every feature ≥ 1e-2 of its atom's largest.
RTOL = 1e-12
SIGNIFICANT = 1e-2


def reference_wacsf(z, pos, cell, etas, rs, rc) -> np.ndarray:
    """(N, |η|·|Rs|) Σ_j Z_j f_c(d) exp(−η (d − Rs)²): one edge, one term at a time, η slowest."""
    out = np.zeros((len(z), len(etas) * len(rs)))
    for i in range(len(z)):
        for j, vector in brute_force_neighbours(pos, cell, rc, i):
            d = math.sqrt(float(vector @ vector))
            weight = int(z[j]) * 0.5 * (math.cos(math.pi * d / rc) + 1.0)
            column = 0
            for eta in etas:
                for shift in rs:
                    out[i, column] += weight * math.exp(-eta * (d - shift) ** 2)
                    column += 1
    return out


@functools.cache
def cached_reference(name: str, label: str) -> np.ndarray:
    """:func:`reference_wacsf` of paper set ``name`` on ``structures()``'s structure ``label``
    (computed once: the variants share it)."""
    params = REGISTRY[name].params
    z, pos, cell = dict(structures())[label]
    return reference_wacsf(z, pos, cell, params["etas"], params["rs"], params["rc"])


def max_relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """Largest |ours − reference| / |reference| over the features ≥ SIGNIFICANT × their atom's
    largest; features of atoms without neighbours (all zero) must be exactly zero."""
    assert ours.shape == reference.shape
    largest = np.abs(reference).max(axis=1, keepdims=True)
    lone = largest[:, 0] == 0
    assert not ours[lone].any()
    mask = np.abs(reference) >= SIGNIFICANT * largest
    mask[lone] = False
    return float((np.abs(ours - reference)[mask] / np.abs(reference)[mask]).max(initial=0.0))


def tiny_cell():
    """bcc Fe, a = 2.87 Å: the cell is far smaller than the 8 Å cutoff (~180 images each)."""
    cell = np.eye(3) * 2.87
    return np.array([26, 26]), np.array([[0.0, 0.0, 0.0], [1.435, 1.435, 1.435]]), cell


def cell_with_a_lone_atom():
    """A 20 Å cube (periodic): an O-H pair and a Na 17 Å away from both and its own images."""
    z = np.array([8, 1, 11])
    pos = np.array([[1.0, 1.0, 1.0], [1.96, 1.2, 1.1], [11.0, 11.0, 11.0]])
    return z, pos, np.eye(3) * 20.0


def structures():
    """(label, (z, pos, cell)): real cells smaller than the cutoff, a tiny cell, a lone atom."""
    real = [
        ("perov_5 #0", small_real_structure(PEROV, 0)),
        ("mp_20 #1", small_real_structure(MP, 1)),
    ]
    return [
        *((label, s[:3]) for label, s in real),
        ("bcc Fe", tiny_cell()),
        ("lone atom", cell_with_a_lone_atom()),
    ]


def kernel_features(z, pos, cell, params, isa, monkeypatch, nl=None) -> np.ndarray:
    monkeypatch.setattr(wacsf_kernel, "ISA", isa)
    pbc = np.ones(3, bool)
    if nl is None:
        nl = neighbour_list(pos, cell, pbc, params["rc"], sort=False)
    return wacsf.featurize(z, pos, cell, pbc, nl, **params, method="kernel")


def test_kernel_is_available():
    """Fails under FP_REQUIRE_KERNEL=1 when the extension did not build, is stale or is off."""
    if not wacsf_kernel.available():
        message = f"compiled wACSF kernel unavailable: {wacsf_kernel.unavailable_reason()}"
        if REQUIRED:
            pytest.fail(message + " (FP_REQUIRE_KERNEL=1)")
        pytest.skip(message)
    assert ISAS and ISAS[0] == "generic"
    assert wacsf_kernel.ISA in ISAS


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", WACSF_SETS)
def test_matches_the_per_edge_reference(name, isa, monkeypatch):
    params = REGISTRY[name].params
    for label, (z, pos, cell) in structures():
        ours = kernel_features(z, pos, cell, params, isa, monkeypatch)
        reference = cached_reference(name, label)
        assert ours.shape == (len(z), REGISTRY[name].dim)
        assert ours.dtype == np.float64 and ours.flags.c_contiguous
        assert max_relative_error(ours, reference) <= RTOL, label
    # the lone atom's row is zero, the others are not
    assert not ours[2].any() and ours[:2].all()


@needs_kernel
@pytest.mark.parametrize("name", WACSF_SETS)
def test_matches_dscribe(name, monkeypatch):
    """DScribe's ACSF (an independent C++ implementation), where it is installed."""
    params = REGISTRY[name].params
    for label, (z, pos, cell) in structures()[:3]:
        ours = kernel_features(z, pos, cell, params, wacsf_kernel.ISA, monkeypatch)
        reference = dscribe_wacsf(z, pos, cell, params["etas"], params["rs"], params["rc"])
        assert max_relative_error(ours, reference) <= 1e-9, label


@needs_kernel
@pytest.mark.parametrize("name", WACSF_SETS)
def test_agrees_with_the_ladder_path(name, monkeypatch):
    """Within the ladder's own bound (test_wacsf_ladder.LADDER_RTOL), on every feature."""
    params = REGISTRY[name].params
    pbc = np.ones(3, bool)
    for z, pos, cell, _ in (small_real_structure(PEROV, 3), small_real_structure(MP, 0)):
        nl = neighbour_list(pos, cell, pbc, 8.0, sort=False)
        ours = kernel_features(z, pos, cell, params, wacsf_kernel.ISA, monkeypatch, nl)
        ladder = wacsf.featurize(z, pos, cell, pbc, nl, **params, method="ladder")
        np.testing.assert_allclose(ours, ladder, rtol=5e-12, atol=0)


@needs_kernel
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("etas", "rs"),
    [
        ([0.1, 1.0], [0.0, 1.0, 2.3333, 7.9]),  # not a lattice (no ladder)
        ([12.0, 60.0], [0.0, 1.0, 2.5]),  # η u² up to 3840: exponents below −708 (exp → 0)
        ([1e20], [0.0, 2.2]),  # exponents down to −6e21: clamped, 0, never NaN
    ],
)
def test_other_grids(etas, rs, isa, monkeypatch):
    z, pos, cell, _ = small_real_structure(PEROV, 3)
    params = {"etas": etas, "rs": rs, "rc": 8.0}
    ours = kernel_features(z, pos, cell, params, isa, monkeypatch)
    reference = reference_wacsf(z, pos, cell, etas, rs, 8.0)
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-300)


@needs_kernel
def test_edge_order_and_wider_lists(monkeypatch):
    """Shuffled edges give the same sums; a wider list is cut at rc; a narrower one refused."""
    z, pos, cell, pbc = small_real_structure(MP, 1)
    params = REGISTRY["wacsfset1"].params
    nl = neighbour_list(pos, cell, pbc, 8.0, sort=False)
    exact = kernel_features(z, pos, cell, params, wacsf_kernel.ISA, monkeypatch, nl)
    order = np.random.default_rng(0).permutation(nl.num_edges)
    shuffled = NeighbourList(
        nl.edge_index[:, order], nl.edge_shift[order], nl.edge_dist[order], nl.cutoff
    )
    np.testing.assert_allclose(
        kernel_features(z, pos, cell, params, wacsf_kernel.ISA, monkeypatch, shuffled),
        exact,
        rtol=1e-13,
    )
    wide = neighbour_list(pos, cell, pbc, 11.0, sort=False)
    assert wide.num_edges > nl.num_edges
    np.testing.assert_allclose(
        kernel_features(z, pos, cell, params, wacsf_kernel.ISA, monkeypatch, wide),
        exact,
        rtol=1e-13,
    )
    with pytest.raises(ValueError, match="below the required radius"):
        narrow = neighbour_list(pos, cell, pbc, 6.0)
        kernel_features(z, pos, cell, params, wacsf_kernel.ISA, monkeypatch, narrow)


@needs_kernel
def test_variants_agree(monkeypatch):
    """Every instruction-set variant gives the same values to rounding (FMA or not)."""
    z, pos, cell, _ = small_real_structure(MP, 1)
    params = REGISTRY["wacsfset3"].params
    values = [kernel_features(z, pos, cell, params, isa, monkeypatch) for isa in ISAS]
    for other in values[1:]:
        np.testing.assert_allclose(other, values[0], rtol=1e-13)


# ---------------------------------------------------------------------------------------------
# Dispatch, fallback, loading, argument checks
# ---------------------------------------------------------------------------------------------


def test_unavailable_kernel_falls_back(monkeypatch):
    """Without the kernel ``"auto"`` is the NumPy choice (the ladder on the paper's sets) and
    ``"kernel"`` raises."""
    monkeypatch.setattr(wacsf_kernel, "_EXTENSION", None)
    monkeypatch.setattr(wacsf_kernel, "_REASON", "switched off by the test")
    z, pos, cell, pbc = small_real_structure(PEROV, 0)
    params = REGISTRY["wacsfset2"].params
    nl = neighbour_list(pos, cell, pbc, 8.0)
    auto = wacsf.featurize(z, pos, cell, pbc, nl, **params)
    ladder = wacsf.featurize(z, pos, cell, pbc, nl, **params, method="ladder")
    np.testing.assert_array_equal(auto, ladder)
    with pytest.raises(RuntimeError, match="switched off by the test"):
        wacsf.featurize(z, pos, cell, pbc, nl, **params, method="kernel")


@needs_kernel
def test_auto_uses_the_kernel(monkeypatch):
    calls = []
    original = wacsf_kernel.featurize
    monkeypatch.setattr(
        wacsf_kernel, "featurize", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    z, pos, cell, pbc = small_real_structure(PEROV, 0)
    params = REGISTRY["wacsfset2"].params
    nl = neighbour_list(pos, cell, pbc, 8.0)
    wacsf.featurize(z, pos, cell, pbc, nl, **params)
    assert calls == [1]
    wacsf.featurize(z, pos, cell, pbc, nl, **params, method="ladder")
    assert calls == [1]


def test_environment_switch():
    """FP_WACSF_KERNEL=0 disables the kernel in a fresh process."""
    code = (
        "from fingerprint_pretrain.builder.descriptors import wacsf_kernel as k; "
        "print(k.available(), k.unavailable_reason())"
    )
    env = {**os.environ, "FP_WACSF_KERNEL": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("False disabled by FP_WACSF_KERNEL=0")


@needs_kernel
def test_stale_build_is_refused(monkeypatch, tmp_path):
    """A build older than _wacsf_kernel.c (source hash compiled in by setup.py) is not used,
    and the reason names the file."""
    if not wacsf_kernel._EXTENSION.SOURCE_HASH:
        pytest.skip("built without setup.py (no source hash)")
    assert wacsf_kernel._load()[0] is not None
    changed = tmp_path / "_wacsf_kernel.c"
    changed.write_bytes(wacsf_kernel._SOURCE.read_bytes() + b"\n")
    monkeypatch.setattr(wacsf_kernel, "_SOURCE", changed)
    extension, reason = wacsf_kernel._load()
    assert extension is None and "stale build: _wacsf_kernel.c changed" in reason


@needs_kernel
def test_extension_checks_its_arguments():
    z, pos, cell, pbc = small_real_structure(PEROV, 0)
    nl = neighbour_list(pos, cell, pbc, 8.0)
    eta, rs = np.array([0.1, 1.0]), np.array([0.0, 2.0])
    wacsf_kernel.featurize(z, nl, eta, rs, 8.0)  # valid
    bad_edges = NeighbourList(nl.edge_index + len(z), nl.edge_shift, nl.edge_dist, nl.cutoff)
    with pytest.raises(ValueError, match="atom index out of range"):
        wacsf_kernel.featurize(z, bad_edges, eta, rs, 8.0)
    with pytest.raises(ValueError, match="inconsistent array sizes"):
        wacsf_kernel.featurize(z, nl, eta, rs[:1], 8.0)
    with pytest.raises(ValueError, match="rc must be finite and > 0"):
        wacsf_kernel.featurize(z, nl, eta, rs, 0.0)
    with pytest.raises(ValueError, match="not supported here"):
        wacsf_kernel.featurize(z, nl, eta, rs, 8.0, isa="avx512")
    out = np.empty((len(z), 2), dtype=np.float32)
    with pytest.raises(TypeError, match="out: expected a contiguous float64 array"):
        wacsf_kernel._EXTENSION.featurize(
            z.astype(np.int64), nl.edge_index, nl.edge_dist, eta, rs, 8.0, out, -1
        )
