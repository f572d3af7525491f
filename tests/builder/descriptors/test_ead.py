"""EAD against a slow, obvious reference, against PyXtal_FF itself, and against wACSF²."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from fingerprint_pretrain.builder.descriptors import ead, wacsf
from fingerprint_pretrain.builder.descriptors.registry import REGISTRY
from fingerprint_pretrain.builder.neighbors import neighbour_list

from tests.builder.descriptors.conftest import (
    MP,
    PEROV,
    as_arrays,
    brute_force_neighbours,
    mixed_structures,
    small_real_structure,
)
from tests.conftest import real_structures

EAD_SETS = [name for name, spec in REGISTRY.items() if spec.family == "ead"]


def ead_reference(z, pos, cell, L, etas, rs, rc, centres) -> np.ndarray:  # noqa: N803
    """The definition, term by term: Python loops over the brute-force neighbours of each centre
    and over the monomials (lx, ly, lz); numpy only over the (η, Rs) grid."""
    eta = np.asarray(etas, dtype=np.float64)[:, None]
    shifts = np.asarray(rs, dtype=np.float64)[None, :]
    monomials = [
        (lx, ly, lz)
        for lx in range(L + 1)
        for ly in range(L + 1 - lx)
        for lz in range(L + 1 - lx - ly)
    ]
    rows = []
    for i in centres:
        rho = {n: np.zeros((eta.size, shifts.size)) for n in monomials}
        for j, vector in brute_force_neighbours(pos, cell, rc, i):
            d = math.sqrt(float(vector @ vector))
            radial = z[j] * 0.5 * (math.cos(math.pi * d / rc) + 1.0)
            radial = radial * np.exp(-eta * (d - shifts) ** 2)
            for n in monomials:
                factor = vector[0] ** n[0] * vector[1] ** n[1] * vector[2] ** n[2]
                factor /= math.sqrt(
                    math.factorial(n[0]) * math.factorial(n[1]) * math.factorial(n[2])
                )
                rho[n] += radial * factor
        blocks = []
        for l in range(L + 1):
            total = sum(rho[n] ** 2 for n in monomials if sum(n) <= l)
            blocks.append(math.factorial(l) / rc ** (2 * l) * total)
        rows.append(np.concatenate([b.ravel() for b in blocks]))
    return np.array(rows)


def featurize(name, z, pos, cell, pbc, **extra):
    params = REGISTRY[name].params
    nl = neighbour_list(pos, cell, pbc, params["rc"])
    return ead.featurize(z, pos, cell, pbc, nl, **params, **extra)


# Values down to ~1e-43 are real; below ~1e-250 both sides are at the mercy of underflow.
TINY = 1e-250


@pytest.mark.parametrize(
    ("name", "dataset", "index", "centres"),
    [
        ("eadset1", MP, 0, [0, 5, 11]),
        ("eadset1", PEROV, 3, [0, 1, 4]),
        ("eadset3", MP, 1, [0, 3]),
        ("eadset3", PEROV, 0, [0, 2, 4]),
        ("eadset2", PEROV, 1, [0, 4]),  # 12 Å and 240 shifts: a 5-atom cell, two centres
    ],
)
def test_matches_slow_reference(name, dataset, index, centres):
    z, pos, cell, pbc = as_arrays(real_structures(dataset, index + 1)[index])
    ours = featurize(name, z, pos, cell, pbc)
    params = REGISTRY[name].params
    assert ours.shape == (len(z), REGISTRY[name].dim)
    reference = ead_reference(z, pos, cell, **params, centres=centres)
    np.testing.assert_allclose(ours[centres], reference, rtol=1e-9, atol=TINY)


@pytest.mark.parametrize("name", EAD_SETS)
def test_l0_block_is_wacsf_squared(name):
    params = REGISTRY[name].params
    n_radial = len(params["etas"]) * len(params["rs"])
    for label, (z, pos, cell, pbc) in mixed_structures()[::4]:
        nl = neighbour_list(pos, cell, pbc, params["rc"])
        block0 = ead.featurize(z, pos, cell, pbc, nl, **params)[:, :n_radial]
        radial = wacsf.featurize(z, pos, cell, pbc, nl, params["etas"], params["rs"], params["rc"])
        np.testing.assert_allclose(block0, radial**2, rtol=1e-10, atol=TINY, err_msg=label)


@pytest.mark.parametrize("name", EAD_SETS)
def test_factorised_equals_direct(name):
    """The recurrence (default) against direct exp evaluation, incl. set 2's capped blocks."""
    z, pos, cell, pbc = small_real_structure(MP, 2)
    auto = featurize(name, z, pos, cell, pbc)
    direct = featurize(name, z, pos, cell, pbc, method="direct")
    np.testing.assert_allclose(auto, direct, rtol=1e-10, atol=TINY)


def test_feature_names_order_and_dims():
    names = ead.feature_names(L=1, etas=[1.0, 5.0], rs=[0.0, 2.35], rc=8.0)
    assert names[:3] == ["l=0,eta=1,Rs=0", "l=0,eta=1,Rs=2.35", "l=0,eta=5,Rs=0"]
    assert names[4] == "l=1,eta=1,Rs=0"
    assert len(names) == 8
    assert [REGISTRY[n].dim for n in EAD_SETS] == [960, 1920, 1280]
    assert [len(REGISTRY[n].params["rs"]) for n in EAD_SETS] == [160, 240, 160]
    assert ead.monomials(2) == (
        (0, 0, 0),
        (1, 0, 0),
        (0, 1, 0),
        (0, 0, 1),
        (2, 0, 0),
        (1, 1, 0),
        (1, 0, 1),
        (0, 2, 0),
        (0, 1, 1),
        (0, 0, 2),
    )
    with pytest.raises(ValueError):
        ead.feature_names(L=-1, etas=[1.0], rs=[0.0], rc=8.0)


def test_general_l_matches_reference():
    """L = 3 (beyond the registered sets; PyXtal_FF's maximum) on a coarse grid."""
    z, pos, cell, pbc = small_real_structure(PEROV, 2)
    params = {"L": 3, "etas": [0.5, 3.0], "rs": [0.0, 1.5, 3.0, 4.5], "rc": 6.0}
    nl = neighbour_list(pos, cell, pbc, 6.0)
    ours = ead.featurize(z, pos, cell, pbc, nl, **params)
    np.testing.assert_allclose(
        ours[:2], ead_reference(z, pos, cell, **params, centres=[0, 1]), rtol=1e-10
    )


def test_isolated_atom_gets_zeros():
    z, pos = np.array([26, 8]), np.array([[0.0, 0.0, 0.0], [15.0, 0.0, 0.0]])
    cell, pbc = np.eye(3) * 40.0, np.zeros(3, dtype=bool)
    nl = neighbour_list(pos, cell, pbc, 8.0)
    values = ead.featurize(z, pos, cell, pbc, nl, **REGISTRY["eadset1"].params)
    assert values.shape == (2, 960) and not values.any()


# ---------------------------------------------------------------------------------------------
# PyXtal_FF 0.2.3 itself (the convention's origin)
# ---------------------------------------------------------------------------------------------


def pyxtal_ead_class():
    """PyXtal_FF's ``EAD`` class, loaded from its files without importing ``pyxtal_ff``.

    ``import pyxtal_ff`` runs its package ``__init__``, which imports its torch models, and those
    call ``torch.set_default_tensor_type(torch.DoubleTensor)``: a process-wide change that would
    leak into every later test. ``descriptors/EAD.py`` needs only numpy, ASE and its sibling
    ``cutoff.py``, so the two files are loaded as a stand-alone package.
    """
    spec = importlib.util.find_spec("pyxtal_ff")  # locates, does not import
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pyxtal_ff not installed: pip install --no-deps pyxtal-ff==0.2.3")
    pytest.importorskip("ase")
    package = "_pyxtal_ff_descriptors"
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [str(Path(spec.submodule_search_locations[0]) / "descriptors")]
        sys.modules[package] = module
    return importlib.import_module(f"{package}.EAD").EAD


@pytest.mark.parametrize(
    ("name", "dataset", "index"),
    [("eadset1", MP, 0), ("eadset1", PEROV, 5), ("eadset3", MP, 3), ("eadset2", PEROV, 2)],
)
def test_matches_pyxtal_ff(name, dataset, index):
    from ase import Atoms

    pyxtal_ead = pyxtal_ead_class()
    z, pos, cell, pbc = as_arrays(real_structures(dataset, index + 1)[index])
    params = REGISTRY[name].params
    calculator = pyxtal_ead(
        {"L": params["L"], "eta": params["etas"], "Rs": params["rs"]},
        Rc=params["rc"],
        derivative=False,
    )
    reference = calculator.calculate(Atoms(numbers=z, positions=pos, cell=cell, pbc=True))["x"]
    ours = featurize(name, z, pos, cell, pbc)
    assert reference.shape == ours.shape
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=TINY)


def test_factorised_path_is_safe_for_steep_gaussians():
    """η up to 60 Å⁻² on a 12 Å grid: the block widths are capped so that no Gaussian above
    e^-600 is lost to underflow; the recurrence matches direct exp evaluation."""
    z, pos, cell, pbc = small_real_structure(PEROV, 4)
    params = {"L": 1, "etas": [0.5, 20.0, 60.0], "rs": np.arange(0.0, 12.0, 0.05), "rc": 12.0}
    nl = neighbour_list(pos, cell, pbc, 12.0)
    factorised = ead.featurize(z, pos, cell, pbc, nl, **params, method="factorised")
    direct = ead.featurize(z, pos, cell, pbc, nl, **params, method="direct")
    assert np.count_nonzero(direct > TINY) > 0.5 * direct.size
    np.testing.assert_allclose(factorised, direct, rtol=1e-10, atol=TINY)


@pytest.mark.parametrize("name", EAD_SETS)
def test_blocks_of_centres_and_lone_atoms(name, monkeypatch):
    """Work split into many blocks of centres (tiny work budget) gives the same values; an atom
    far from the rest (no neighbours) gets zeros and changes nothing for the others."""
    from fingerprint_pretrain.builder.descriptors import _common

    z, pos, cell, pbc = small_real_structure(MP, 0)
    whole = featurize(name, z, pos, cell, pbc)
    monkeypatch.setattr(_common, "_WORK_ELEMENTS", 20_000)
    np.testing.assert_allclose(featurize(name, z, pos, cell, pbc), whole, rtol=1e-12, atol=TINY)
    # the same atoms as a finite cluster, plus one lone atom 30 Å away
    cluster = featurize(name, z, pos, cell * 10, np.zeros(3, bool))
    lone_z, lone_pos = np.append(z, 8), np.vstack([pos, pos.max(axis=0) + 30.0])
    with_lone = featurize(name, lone_z, lone_pos, cell * 10, np.zeros(3, bool))
    assert not with_lone[-1].any()
    np.testing.assert_allclose(with_lone[:-1], cluster, rtol=1e-12, atol=TINY)


def test_setup_cache_follows_list_parameters():
    """The per-call parameter lookup finds the registry's lists by identity, and a list changed
    in place gets the plan of its new values (checked against a fresh copy of them)."""
    params = REGISTRY["eadset3"].params
    etas, rs = list(params["etas"]), list(params["rs"])
    first = ead._setup(params["L"], etas, rs, params["rc"])
    assert ead._setup(params["L"], etas, rs, params["rc"]) is first
    assert ead._RECENT[(id(etas), id(rs))][5] is first
    rs[:] = [r + 0.5 for r in rs]  # mutated in place: same ids, new values
    moved = ead._setup(params["L"], etas, rs, params["rc"])
    np.testing.assert_array_equal(moved[2], np.array(rs))
    fresh = ead._setup(params["L"], list(etas), list(rs), params["rc"])
    np.testing.assert_array_equal(moved[4].dplan, fresh[4].dplan)
    assert not np.array_equal(moved[4].dplan, first[4].dplan)
