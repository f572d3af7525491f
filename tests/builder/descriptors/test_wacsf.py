"""wACSF against DScribe's ACSF (independent C++ implementation) on real structures."""

from __future__ import annotations

import numpy as np
import pytest
from fingerprint_pretrain.builder.descriptors import wacsf, wacsf_kernel
from fingerprint_pretrain.builder.descriptors.registry import REGISTRY
from fingerprint_pretrain.builder.neighbors import neighbour_list

from tests.builder.descriptors.conftest import MP, mixed_structures, small_real_structure

WACSF_SETS = [name for name, spec in REGISTRY.items() if spec.family == "wacsf"]


def dscribe_wacsf(z, pos, cell, etas, rs, rc) -> np.ndarray:
    """Σ_s Z_s · (DScribe G2 block of species s): wACSF with the same (η, Rs) order as ours."""
    dscribe = pytest.importorskip("dscribe.descriptors")
    from ase import Atoms

    species = sorted(set(int(x) for x in z))
    g2 = [[eta, r] for eta in etas for r in rs]
    acsf = dscribe.ACSF(species=species, r_cut=rc, g2_params=g2, periodic=True)
    # DScribe's layout: one block per species, sorted by Z, each [G1, G2 (in g2_params order)].
    stride = 1 + len(g2)
    assert acsf.get_number_of_features() == len(species) * stride
    features = acsf.create(Atoms(numbers=z, positions=pos, cell=cell, pbc=True))
    features = np.asarray(features).reshape(len(z), len(species), stride)
    return np.einsum("s,isk->ik", np.array(species, dtype=np.float64), features[:, :, 1:])


@pytest.mark.parametrize("name", WACSF_SETS)
def test_matches_dscribe_on_real_structures(name):
    params = REGISTRY[name].params
    structures = mixed_structures()
    assert len(structures) >= 18
    for label, (z, pos, cell, pbc) in structures:
        nl = neighbour_list(pos, cell, pbc, params["rc"])
        ours = wacsf.featurize(z, pos, cell, pbc, nl, **params)
        reference = dscribe_wacsf(z, pos, cell, params["etas"], params["rs"], params["rc"])
        assert ours.shape == (len(z), REGISTRY[name].dim)
        np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-12, err_msg=label)


def test_paths_agree_on_a_regular_grid(monkeypatch):
    """The factorised recurrence equals direct evaluation and the fused path; all equal DScribe.
    (The compiled kernel is switched off: ``"auto"`` makes its NumPy choice.)"""
    monkeypatch.setattr(wacsf_kernel, "_EXTENSION", None)
    z, pos, cell, pbc = small_real_structure()
    etas, rs, rc = [0.3, 2.0, 9.0], list(np.arange(0.0, 7.0, 0.25)), 7.0
    nl = neighbour_list(pos, cell, pbc, rc)
    direct = wacsf.featurize(z, pos, cell, pbc, nl, etas, rs, rc, method="direct")
    factorised = wacsf.featurize(z, pos, cell, pbc, nl, etas, rs, rc, method="factorised")
    auto = wacsf.featurize(z, pos, cell, pbc, nl, etas, rs, rc)  # 28 regular shifts: factorised
    fused = wacsf.featurize(z, pos, cell, pbc, nl, etas, rs + [7.3], rc)  # irregular grid
    np.testing.assert_allclose(factorised, direct, rtol=1e-11, atol=1e-300)
    np.testing.assert_array_equal(auto, factorised)
    np.testing.assert_allclose(
        fused.reshape(len(z), 3, 29)[:, :, :28].reshape(len(z), -1), direct, rtol=1e-11
    )
    np.testing.assert_allclose(direct, dscribe_wacsf(z, pos, cell, etas, rs, rc), rtol=1e-9)


def test_wider_neighbour_list_is_cut_and_narrower_refused():
    z, pos, cell, pbc = small_real_structure()
    params = REGISTRY["wacsfset2"].params
    exact = wacsf.featurize(z, pos, cell, pbc, neighbour_list(pos, cell, pbc, 8.0), **params)
    wide = wacsf.featurize(z, pos, cell, pbc, neighbour_list(pos, cell, pbc, 11.0), **params)
    np.testing.assert_allclose(wide, exact, rtol=1e-13)
    with pytest.raises(ValueError, match="below the required radius"):
        wacsf.featurize(z, pos, cell, pbc, neighbour_list(pos, cell, pbc, 6.0), **params)


def test_feature_names_order_and_validation():
    names = wacsf.feature_names([0.4, 5.0], [0.0, 3.0, 2.35])
    assert names == [
        "eta=0.4,Rs=0",
        "eta=0.4,Rs=3",
        "eta=0.4,Rs=2.35",
        "eta=5,Rs=0",
        "eta=5,Rs=3",
        "eta=5,Rs=2.35",
    ]
    # column order is η slowest, Rs fastest: check one column by hand
    z, pos, cell, pbc = small_real_structure()
    nl = neighbour_list(pos, cell, pbc, 8.0)
    values = wacsf.featurize(z, pos, cell, pbc, nl, [0.4, 5.0], [0.0, 3.0, 2.35])
    j, i = nl.edge_index
    d = nl.edge_dist
    term = z[j] * np.exp(-5.0 * (d - 3.0) ** 2) * 0.5 * (np.cos(np.pi * d / 8.0) + 1)
    np.testing.assert_allclose(values[:, 4], np.bincount(i, term, minlength=len(z)), rtol=1e-12)
    with pytest.raises(ValueError):
        wacsf.feature_names([0.0], [1.0])
    with pytest.raises(ValueError):
        wacsf.required_radius([1.0], [1.0], rc=-1.0)
    assert wacsf.required_radius([1.0], [1.0]) == wacsf.DEFAULT_RC == 8.0


def test_isolated_atoms_get_zeros():
    z = np.array([8, 1])
    pos = np.array([[0.0, 0.0, 0.0], [20.0, 0.0, 0.0]])
    cell = np.eye(3) * 40.0
    pbc = np.zeros(3, dtype=bool)
    nl = neighbour_list(pos, cell, pbc, 8.0)
    values = wacsf.featurize(z, pos, cell, pbc, nl, **REGISTRY["wacsfset1"].params)
    assert values.shape == (2, 48)
    assert not values.any()


@pytest.mark.parametrize("method", ["auto", "fused", "direct"])  # auto: the ladder
def test_blocks_of_centres_and_lone_atoms(method, monkeypatch):
    """Many blocks of centres (tiny work budget) give the same values; a lone atom among
    others gets zeros and changes nothing for them (reduceat skips its empty segment)."""
    from fingerprint_pretrain.builder.descriptors import _common

    z, pos, cell, pbc = small_real_structure(MP, 0)
    params = REGISTRY["wacsfset3"].params
    nl = neighbour_list(pos, cell, pbc, 8.0)
    whole = wacsf.featurize(z, pos, cell, pbc, nl, **params, method=method)
    monkeypatch.setattr(_common, "_WORK_ELEMENTS", 5_000)
    blocked = wacsf.featurize(z, pos, cell, pbc, nl, **params, method=method)
    np.testing.assert_allclose(blocked, whole, rtol=1e-12)
    box, open_ = cell * 10, np.zeros(3, bool)
    for lone_at in (0, len(z)):  # lone atom first and last
        lone_z = np.insert(z, lone_at, 8)
        lone_pos = np.insert(pos, lone_at, pos.max(axis=0) + 30.0, axis=0)
        cluster = wacsf.featurize(
            z, pos, box, open_, neighbour_list(pos, box, open_, 8.0), **params, method=method
        )
        values = wacsf.featurize(
            lone_z,
            lone_pos,
            box,
            open_,
            neighbour_list(lone_pos, box, open_, 8.0),
            **params,
            method=method,
        )
        assert not values[lone_at].any()
        np.testing.assert_allclose(np.delete(values, lone_at, axis=0), cluster, rtol=1e-12)
