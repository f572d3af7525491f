"""Physical invariances of every registered label set (all nine).

GMP sets run when ``builder.descriptors.gmp`` imports; they are skipped (never failed) only when
that module cannot be imported at all.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from fingerprint_pretrain.builder.descriptors.registry import REGISTRY, DescriptorSpec
from fingerprint_pretrain.builder.neighbors import neighbour_list

from tests.builder.descriptors.conftest import (
    MP,
    PEROV,
    random_rotation,
    small_real_structure,
    supercell,
)

NAMES = list(REGISTRY)


def spec_for(name: str) -> DescriptorSpec:
    spec = REGISTRY[name]
    if spec.family == "gmp":
        pytest.importorskip("fingerprint_pretrain.builder.descriptors.gmp")
    else:
        importlib.import_module(f"fingerprint_pretrain.builder.descriptors.{spec.family}")
    return spec


def compute(spec: DescriptorSpec, z, pos, cell, pbc=(True, True, True)) -> np.ndarray:
    pbc = np.asarray(pbc, dtype=bool)
    values = spec.compute(z, pos, cell, pbc, neighbour_list(pos, cell, pbc, spec.radius))
    assert values.shape == (len(z), spec.dim) and values.dtype == np.float64
    assert np.all(np.isfinite(values))
    return values


def assert_same(actual, expected, spec: DescriptorSpec, rtol: float = 1e-9) -> None:
    """Equal to ``rtol`` relative per value, with an absolute floor of 1e-11 times the largest
    magnitude of the feature's column (EAD values span ~40 orders of magnitude). GMP features
    that vanish by symmetry are rounding noise (~1e-15 of the set's scale): for them the floor
    is 1e-12 of the largest value of the whole set."""
    expected = np.asarray(expected)
    floor = 1e-11 * np.abs(expected).max(axis=0, keepdims=True) + 1e-300
    if spec.family == "gmp":
        floor = floor + 1e-12 * np.abs(expected).max()
    error = np.abs(np.asarray(actual) - expected)
    bad = error > rtol * np.abs(expected) + floor
    assert not bad.any(), (
        f"{spec.name}: {bad.sum()} values differ, worst {error[bad].max():.3g} "
        f"at features {sorted(set(np.nonzero(bad)[1].tolist()))[:5]}"
    )


# A 5-atom perovskite and a 12-atom MP structure (triclinic cell, several species).
STRUCTURES = {"perovskite": (PEROV, 0), "mp": (MP, 0)}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_rotation_translation_permutation(name, structure):
    spec = spec_for(name)
    z, pos, cell, _ = small_real_structure(*STRUCTURES[structure])
    reference = compute(spec, z, pos, cell)
    rotation = random_rotation(7)
    assert_same(compute(spec, z, pos @ rotation.T, cell @ rotation.T), reference, spec)
    shift = np.array([0.37, -1.91, 2.6])
    assert_same(compute(spec, z, pos + shift, cell), reference, spec)
    order = np.random.default_rng(3).permutation(len(z))
    assert_same(compute(spec, z[order], pos[order], cell), reference[order], spec)


@pytest.mark.parametrize("name", NAMES)
def test_supercells_and_cell_choice(name):
    """Same per-atom values in the primitive cell, a 2×2×2 supercell and skewed cells."""
    spec = spec_for(name)
    z, pos, cell, _ = small_real_structure(PEROV, 0)
    reference = compute(spec, z, pos, cell)
    skewed = [[1, 1, 0], [0, 1, 0], [0, 0, 1]]  # same lattice, sheared cell
    skewed_double = [[1, 1, 0], [-1, 1, 0], [0, 0, 1]]  # twice the volume, sheared
    for matrix in (np.diag([2, 2, 2]), skewed, skewed_double):
        big_z, big_pos, big_cell, origin = supercell(z, pos, cell, matrix)
        assert_same(compute(spec, big_z, big_pos, big_cell), reference[origin], spec)


@pytest.mark.parametrize("name", NAMES)
def test_one_atom_cell_smaller_than_cutoff(name):
    """bcc Fe primitive cell (one atom, sides 2.5 Å, far below every radius): the atom's own
    images are its only neighbours; equals the conventional 2-atom cell and a 2×2×2 supercell."""
    spec = spec_for(name)
    a = 2.87
    primitive = 0.5 * a * np.array([[-1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])
    z, pos = np.array([26]), np.zeros((1, 3))
    values = compute(spec, z, pos, primitive)
    if spec.family != "gmp":  # (GMP: odd orders vanish by symmetry, up to rounding)
        assert np.all(values > 0)
    conventional = compute(
        spec, np.array([26, 26]), np.array([[0.0, 0.0, 0.0], [0.5 * a] * 3]), np.eye(3) * a
    )
    assert_same(conventional, np.repeat(values, 2, axis=0), spec)
    big_z, big_pos, big_cell, origin = supercell(z, pos, primitive, np.diag([2, 2, 2]))
    assert_same(compute(spec, big_z, big_pos, big_cell), values[origin], spec)


@pytest.mark.parametrize("name", NAMES)
def test_continuous_as_a_neighbour_crosses_the_radius(name):
    """Two atoms in vacuum moved apart across the set's radius: the features of atom 0 approach
    those of a lone atom smoothly, with no jump at the radius (wACSF/EAD: → 0 through the cosine
    cutoff; GMP: truncation only drops terms below its 1e-16 overlap threshold)."""
    spec = spec_for(name)
    z = np.array([14, 8])
    radius = spec.radius
    if spec.family == "gmp":  # GMP truncates per element: the radius for Si and O
        radius = spec.module.required_radius(elements=z, **spec.params)
    box, pbc = np.eye(3) * (3 * spec.radius + 10.0), (False, False, False)
    lone = compute(spec, z[:1], np.zeros((1, 3)), box, pbc)[0]

    def at(separation: float) -> np.ndarray:
        pos = np.array([[0.0, 0.0, 0.0], [separation, 0.0, 0.0]])
        return compute(spec, z, pos, box, pbc)[0]

    # scale of each feature: its largest deviation from the lone-atom value along the path
    sweep = np.array([at(d) for d in np.linspace(0.3, 0.999, 25) * radius])
    scale = np.abs(sweep - lone).max(axis=0) + np.abs(lone) + 1e-300
    delta = 1e-6 * radius
    inside, outside = at(radius - delta), at(radius + delta)
    np.testing.assert_allclose(outside, lone, rtol=1e-14, atol=0)  # nothing beyond the radius
    assert np.all(np.abs(inside - lone) <= 1e-6 * scale)  # no jump at the radius
    # and the approach is monotone in the last stretch: closer to the limit as d → radius
    farther_in = at(radius - 1000 * delta)
    assert np.all(np.abs(inside - lone) <= np.abs(farther_in - lone) + 1e-12 * scale)
    if spec.family != "gmp":
        assert not lone.any()  # a lone atom has no neighbours: zeros
