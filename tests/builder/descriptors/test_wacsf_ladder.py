"""wACSF's ladder path against a slow, obvious term-by-term reference and the fused path.

The reference enumerates periodic images by brute force (no :mod:`builder.neighbors`) and sums
Z_j f_c(d) exp(−η (d − Rs)²) one term at a time with ``math``; it shares nothing with the code
under test. The compiled kernel is switched off here, so that ``"auto"`` makes its NumPy choice
(the kernel: ``test_wacsf_kernel.py``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from fingerprint_pretrain.builder.descriptors import wacsf, wacsf_kernel
from fingerprint_pretrain.builder.descriptors.registry import REGISTRY
from fingerprint_pretrain.builder.neighbors import neighbour_list

from tests.builder.descriptors.conftest import (
    MP,
    PEROV,
    brute_force_neighbours,
    small_real_structure,
)

WACSF_SETS = [name for name, spec in REGISTRY.items() if spec.family == "wacsf"]
# The ladder's rounding is ≲ (n·m + 100) ulp (module docstring): ~1.5e-12 on set 3.
LADDER_RTOL = 5e-12


@pytest.fixture(autouse=True)
def numpy_paths(monkeypatch):
    """Without the compiled kernel, as on a machine where it is not built."""
    monkeypatch.setattr(wacsf_kernel, "_EXTENSION", None)
    monkeypatch.setattr(wacsf_kernel, "_REASON", "switched off by the test")


def reference_wacsf(z, pos, cell, etas, rs, rc) -> np.ndarray:
    """(N, |η|·|Rs|) Σ_j Z_j f_c(d) exp(−η (d − Rs)²), term by term, η slowest."""
    out = np.zeros((len(z), len(etas), len(rs)))
    for i in range(len(z)):
        for j, vector in brute_force_neighbours(pos, cell, rc, i):
            d = math.sqrt(float(vector @ vector))
            weight = int(z[j]) * 0.5 * (math.cos(math.pi * d / rc) + 1.0)
            for a, eta in enumerate(etas):
                for k, shift in enumerate(rs):
                    out[i, a, k] += weight * math.exp(-eta * (d - shift) ** 2)
    return out.reshape(len(z), -1)


def featurize(structure, etas, rs, rc=8.0, method="auto"):
    z, pos, cell, pbc = structure
    nl = neighbour_list(pos, cell, pbc, rc, sort=False)  # the builder's (unsorted) lists
    return wacsf.featurize(z, pos, cell, pbc, nl, etas, rs, rc, method=method)


@pytest.fixture(scope="module")
def structures():
    """A perovskite (5 atoms) and an mp_20 structure (8 atoms, 4 elements)."""
    return [small_real_structure(PEROV, 0), small_real_structure(MP, 1)]


@pytest.mark.parametrize("name", WACSF_SETS)
def test_ladder_runs_the_paper_sets_and_matches_the_reference(name, structures):
    params = REGISTRY[name].params
    ladder = wacsf._validated(params["etas"], params["rs"], params["rc"]).ladder
    # The paper's grids are lattices (Δ = 1 or 0.5 Å) and their η multiples of 0.01 Å⁻².
    assert ladder is not None and ladder.program
    for structure in structures:
        ours = featurize(structure, **params)
        np.testing.assert_array_equal(ours, featurize(structure, **params, method="ladder"))
        reference = reference_wacsf(*structure[:3], params["etas"], params["rs"], params["rc"])
        np.testing.assert_allclose(ours, reference, rtol=LADDER_RTOL, atol=0)
        assert ours.flags.c_contiguous and ours.dtype == np.float64


@pytest.mark.parametrize("name", WACSF_SETS)
def test_ladder_equals_the_fused_path_on_many_structures(name):
    """The values the fused path stored before stay within 5e-12 (measured max 1.5e-12)."""
    from tests.builder.descriptors.conftest import mixed_structures

    params = REGISTRY[name].params
    for label, structure in mixed_structures():
        ladder = featurize(structure, **params, method="ladder")
        fused = featurize(structure, **params, method="fused")
        np.testing.assert_allclose(ladder, fused, rtol=LADDER_RTOL, atol=0, err_msg=label)


@pytest.mark.parametrize(
    ("etas", "rs", "program"),
    [
        ([0.2, 0.3, 0.9], [0.0, 1.5, 3.0, 4.5], True),  # η₀ = 0.1 is no η: a temporary
        ([0.5, 0.05, 0.5, 2.0], [3.0, 1.0, 2.0, 1.0, 0.5], True),  # duplicates, unsorted Rs
        ([1.0, 2.0**0.5], [0.0, 2.0, 6.0], False),  # no common η₀: two exps per η
        ([0.001, 1.0], list(np.arange(0.0, 21.0)), False),  # n·m = 21000: above _MAX_POWER
        ([0.4, 3.0], [2.5], True),  # a single Rs (no rungs)
        ([0.7], [-1.0, 0.0, 1.0, 2.0], False),  # negative Rs: lattice origin −1 Å
    ],
)
def test_ladder_variants_match_the_reference(etas, rs, program):
    structure = small_real_structure(PEROV, 3)
    ladder = wacsf._validated(etas, rs, 8.0).ladder
    assert ladder is not None and bool(ladder.program) == program
    ours = featurize(structure, etas, rs)
    np.testing.assert_allclose(ours, reference_wacsf(*structure[:3], etas, rs, 8.0), rtol=1e-12)


@pytest.mark.parametrize(
    ("etas", "rs"),
    [
        ([0.1, 1.0], [0.0, 1.0, 2.3333]),  # not a lattice
        ([0.01, 10.0], [0.0, 5.0, 10.0]),  # η (mΔ)² = 1000 > 600: a rung could overflow
        ([12.0], [0.0, 1.0]),  # η u² up to 768: A could underflow
    ],
)
def test_ladder_refused_where_unsafe_falls_back_to_fused(etas, rs):
    assert wacsf._validated(etas, rs, 8.0).ladder is None
    structure = small_real_structure(PEROV, 3)
    auto = featurize(structure, etas, rs)
    np.testing.assert_array_equal(auto, featurize(structure, etas, rs, method="fused"))
    np.testing.assert_array_equal(auto, featurize(structure, etas, rs, method="ladder"))
    np.testing.assert_allclose(auto, reference_wacsf(*structure[:3], etas, rs, 8.0), rtol=1e-11)


def test_rung_at_a_time_equals_whole_table(monkeypatch):
    """Large blocks reduce one rung at a time: same values as the whole rung table."""
    structure = small_real_structure(MP, 0)
    params = REGISTRY["wacsfset3"].params
    whole = featurize(structure, **params)
    monkeypatch.setattr(wacsf, "_RUNGS_IN_CACHE", 0)
    np.testing.assert_allclose(featurize(structure, **params), whole, rtol=1e-15, atol=0)


@pytest.mark.parametrize("multiples", [[1, 10, 40, 100], [1, 6, 10, 20, 70, 500, 350], [3, 3, 7]])
def test_power_program_makes_every_multiple(multiples):
    """Run the addition chain on exponents (products of powers add exponents)."""
    program, base, n_registers = wacsf._power_program(multiples)
    exponent = [None] * n_registers
    exponent[base] = 1
    for destination, left, right in program:
        assert exponent[left] is not None and (right < 0 or exponent[right] is not None)
        exponent[destination] = exponent[left] + (0 if right < 0 else exponent[right])
    assert exponent[: len(multiples)] == multiples
    assert len(program) <= 3 * len(multiples) + 10


def test_power_program_reuses_temporaries():
    """Set 2's chain 1 → 2 → 4 → 5 → 10 → 20 → 40 → 50 → 100 needs one temporary, not five."""
    program, base, n_registers = wacsf._power_program([1, 10, 40, 100])
    assert (len(program), base, n_registers) == (8, 0, 5)


def test_unknown_method_is_refused():
    structure = small_real_structure(PEROV, 0)
    with pytest.raises(ValueError, match="unknown wACSF method 'exact'"):
        featurize(structure, [1.0], [0.0], method="exact")


@pytest.fixture
def fresh_plans():
    """Plans built under a monkeypatched mode, and none of them kept afterwards."""
    wacsf._cached_plan.cache_clear()
    yield
    wacsf._cached_plan.cache_clear()


@pytest.mark.parametrize("cheap_exp", [True, False])
def test_ladder_mode_follows_the_cost_of_exp(cheap_exp, monkeypatch, fresh_plans):
    """Where numpy's exp is vectorised (AVX-512) every η gets its own exps; elsewhere the η₀
    chain. Both match the reference on every paper set."""
    monkeypatch.setattr(wacsf, "_CHEAP_EXP", cheap_exp)
    structure = small_real_structure(MP, 1)
    for name in WACSF_SETS:
        params = REGISTRY[name].params
        ladder = wacsf._validated(params["etas"], params["rs"], params["rc"]).ladder
        assert ladder is not None and bool(ladder.program) is not cheap_exp
        assert ladder.exponent_scale.shape[1] == (len(params["etas"]) if cheap_exp else 1)
        reference = reference_wacsf(*structure[:3], params["etas"], params["rs"], params["rc"])
        np.testing.assert_allclose(featurize(structure, **params), reference, rtol=LADDER_RTOL)


def test_more_centres_than_the_cached_range(monkeypatch):
    """Structures with more atoms than ``_RANGE`` holds take np.arange: same values."""
    structure = small_real_structure(MP, 1)
    params = REGISTRY["wacsfset2"].params
    expected = featurize(structure, **params)
    monkeypatch.setattr(wacsf, "_RANGE", np.arange(3))
    np.testing.assert_array_equal(featurize(structure, **params), expected)
