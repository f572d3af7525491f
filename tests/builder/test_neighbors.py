"""The neighbour list is complete and exact: checked against a brute-force image enumeration
(written here, independent of the engine) and against ASE's neighbor_list, on real structures
and on the cells that break naive codes (one atom, cell << cutoff, strongly skewed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from fingerprint_pretrain.builder.neighbors import neighbour_list

from tests.conftest import real_structures

CUTOFF = 8.0


def brute_force(pos, cell, pbc, cutoff):
    """All (i, j, shift) -> distance with 0 < d < cutoff, by enumerating enough images.

    Along a periodic direction k, images up to n_k = ceil(cutoff / h_k) + 1 cells away can be
    within the cutoff, with h_k the spacing between lattice planes spanned by the other two
    vectors (volume / |a_l x a_m|)."""
    pos = np.asarray(pos, float)
    cell = np.asarray(cell, float)
    volume = abs(np.linalg.det(cell))
    reach = []
    for k in range(3):
        if not pbc[k]:
            reach.append(0)
            continue
        l, m = [x for x in range(3) if x != k]
        spacing = volume / np.linalg.norm(np.cross(cell[l], cell[m]))
        reach.append(int(np.ceil(cutoff / spacing)) + 1)
    shifts = np.array(list(itertools.product(*[range(-r, r + 1) for r in reach])))
    images = shifts @ cell  # (S, 3)
    out = {}
    for i in range(len(pos)):
        vec = pos[None, :, :] + images[:, None, :] - pos[i]  # (S, N, 3)
        d = np.linalg.norm(vec, axis=-1)
        s_idx, j_idx = np.nonzero((d > 0) & (d < cutoff))
        for s, j in zip(s_idx, j_idx):
            out[(i, int(j), *map(int, shifts[s]))] = d[s, j]
    return out


def as_dict(nl):
    j, i = nl.edge_index
    return {
        (int(a), int(b), *map(int, s)): d for a, b, s, d in zip(i, j, nl.edge_shift, nl.edge_dist)
    }


def assert_same(nl, reference):
    got = as_dict(nl)
    assert len(got) == nl.num_edges, "duplicate edges"
    missing = set(reference) - set(got)
    extra = set(got) - set(reference)
    assert not missing and not extra, f"missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
    keys = sorted(reference)
    np.testing.assert_allclose([got[k] for k in keys], [reference[k] for k in keys], atol=1e-6)


def assert_sorted_nearest_first(nl):
    j, i = nl.edge_index
    assert np.all(np.diff(i) >= 0), "edges not grouped by centre"
    same_centre = np.diff(i) == 0
    assert np.all(np.diff(nl.edge_dist)[same_centre] >= 0), "not nearest first"


@pytest.mark.parametrize(
    "dataset,n,step", [("mp_20_subset.csv.gz", 25, 97), ("perov_5.csv.gz", 8, 900)]
)
def test_real_structures_match_brute_force(dataset, n, step):
    for s in real_structures(dataset, n, step):
        pos, cell = s.cart_coords, s.lattice.matrix
        nl = neighbour_list(pos, cell, [True] * 3, CUTOFF)
        assert_same(nl, brute_force(pos, cell, [True] * 3, CUTOFF))
        assert_sorted_nearest_first(nl)
        # the stored convention reproduces the distances
        np.testing.assert_allclose(
            np.linalg.norm(nl.edge_vectors(pos, cell), axis=1), nl.edge_dist, atol=1e-12
        )


def test_real_structures_match_ase():
    from ase.neighborlist import neighbor_list as ase_neighbor_list

    for s in real_structures("mp_20_subset.csv.gz", 6, 301):
        atoms = s.to_ase_atoms()
        i, j, shift, d = ase_neighbor_list("ijSd", atoms, CUTOFF, self_interaction=False)
        reference = {
            (int(a), int(b), *map(int, sh)): dist
            for a, b, sh, dist in zip(i, j, shift, d)
            if dist < CUTOFF
        }
        assert_same(neighbour_list(s.cart_coords, s.lattice.matrix, [True] * 3, CUTOFF), reference)


@pytest.mark.parametrize(
    "cell",
    [
        np.eye(3) * 2.5,  # one atom, cell side far below the cutoff
        np.array([[2.0, 0, 0], [1.9, 0.6, 0], [0.3, 0.2, 1.7]]),  # tiny and strongly skewed
        np.array([[3.0, 0, 0], [-2.9, 0.4, 0], [0.0, 0.0, 30.0]]),  # skewed slab with vacuum
    ],
)
def test_one_atom_and_tiny_skewed_cells(cell):
    pos = np.array([[0.1, 0.2, 0.3]])
    nl = neighbour_list(pos, cell, [True] * 3, CUTOFF)
    assert nl.num_edges > 0
    assert_same(nl, brute_force(pos, cell, [True] * 3, CUTOFF))
    # an atom's own images are neighbours: every edge here is (0, 0, shift != 0)
    assert np.all(nl.edge_index == 0) and np.all(np.abs(nl.edge_shift).sum(axis=1) > 0)


def test_two_atoms_tiny_skewed_cell():
    cell = np.array([[2.2, 0, 0], [2.0, 0.9, 0], [1.1, 0.4, 1.9]])
    pos = np.array([[0.0, 0.0, 0.0], [1.3, 0.7, 0.9]])
    assert_same(
        neighbour_list(pos, cell, [True] * 3, CUTOFF), brute_force(pos, cell, [True] * 3, CUTOFF)
    )


def test_large_supercell():
    s = real_structures("perov_5.csv.gz", 1)[0] * (3, 3, 3)  # 135 atoms, sides ~12 Å
    nl = neighbour_list(s.cart_coords, s.lattice.matrix, [True] * 3, CUTOFF)
    assert_same(nl, brute_force(s.cart_coords, s.lattice.matrix, [True] * 3, CUTOFF))


def test_molecule_and_partial_periodicity():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 6, size=(12, 3))
    zero_cell = np.zeros((3, 3))
    nl = neighbour_list(pos, zero_cell, [False] * 3, 4.0)
    assert_same(nl, brute_force(pos, np.eye(3), [False] * 3, 4.0))
    assert not nl.edge_shift.any()
    # a slab: periodic in-plane, zero c vector
    slab_cell = np.array([[3.1, 0, 0], [1.2, 2.8, 0], [0, 0, 0]])
    nl = neighbour_list(pos, slab_cell, [True, True, False], 4.0)
    big_c = slab_cell.copy()
    big_c[2] = [0, 0, 1.0]
    assert_same(nl, brute_force(pos, big_c, [True, True, False], 4.0))
    assert not nl.edge_shift[:, 2].any()


def test_within_keeps_order_and_subset():
    s = real_structures("mp_20_subset.csv.gz", 1)[0]
    nl = neighbour_list(s.cart_coords, s.lattice.matrix, [True] * 3, CUTOFF)
    sub = nl.within(5.0)
    assert_same(sub, brute_force(s.cart_coords, s.lattice.matrix, [True] * 3, 5.0))
    assert_sorted_nearest_first(sub)


def test_unsorted_list_has_the_same_edges_grouped_by_centre():
    for s in real_structures("mp_20_subset.csv.gz", 5, 211):
        sorted_nl = neighbour_list(s.cart_coords, s.lattice.matrix, [True] * 3, 12.0)
        fast = neighbour_list(s.cart_coords, s.lattice.matrix, [True] * 3, 12.0, sort=False)
        assert as_dict(fast) == as_dict(sorted_nl)
        assert np.all(np.diff(fast.edge_index[1]) >= 0)


@pytest.mark.parametrize("name", ["wacsfset1", "eadset1", "gmpset2"])
def test_descriptors_do_not_depend_on_edge_order(name):
    from fingerprint_pretrain.builder.descriptors.registry import get

    spec = get(name)
    s = real_structures("mp_20_subset.csv.gz", 1, 5)[0]
    args = (
        np.array([site.specie.Z for site in s]),
        s.cart_coords,
        s.lattice.matrix,
        np.array([True] * 3),
    )
    radius = spec.radius_for(args[0])
    a = spec.compute(*args, neighbour_list(*args[1:], radius))
    b = spec.compute(*args, neighbour_list(*args[1:], radius, sort=False))
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("skewed_row", [0, 1, 2])
def test_huge_shifts_keep_the_exact_canonical_order(skewed_row):
    """A simple cubic lattice given by a cell with one vector 40000 cells long: shifts reach
    ~80,000 cells in that component. Edges still match the cubic lattice's (brute force on the
    cubic cell, mapped through the unimodular change of basis) and ties keep the canonical
    order (distance, then j, then shift lexicographically); a shift key packed in 16 bits per
    component would scramble it."""
    cubic = np.eye(3) * 3.0
    change = np.eye(3, dtype=np.int64)  # cell = change @ cubic
    change[skewed_row, (skewed_row + 1) % 3] = 40000
    cell = change @ cubic
    pos = np.zeros((1, 3))
    nl = neighbour_list(pos, cell, [True] * 3, CUTOFF)
    # the same lattice vector: shift_cubic @ cubic == shift @ cell, so shift = shift_cubic @ inv
    inverse = np.rint(np.linalg.inv(change)).astype(np.int64)
    reference = {}
    for (i, j, *shift_cubic), d in brute_force(pos, cubic, [True] * 3, CUTOFF).items():
        reference[(i, j, *map(int, np.array(shift_cubic) @ inverse))] = d
    assert_same(nl, reference)
    keys = [
        (float(d), int(j), tuple(s))
        for d, j, s in zip(nl.edge_dist, nl.edge_index[0], nl.edge_shift.tolist())
    ]
    assert keys == sorted(keys)


def python_sorted_list(pos, cell, pbc, cutoff):
    """The canonical list by the obvious route: the engine's raw pairs, filtered in a Python
    loop (d < cutoff, not the zero-shift self pair) and ordered by Python's ``sorted`` on
    (centre, distance, neighbour, shift) tuples. Same engine, so the same float distances:
    the order must match to the last tie."""
    from fingerprint_pretrain.builder.neighbors import _search_cell
    from pymatgen.optimization.neighbors import find_points_in_spheres

    pbc_int = np.asarray(pbc, dtype=np.int64)
    cell = np.asarray(cell, float)
    c, n, img, d = find_points_in_spheres(
        np.asarray(pos, float),
        np.asarray(pos, float),
        cutoff,
        pbc_int,
        _search_cell(cell, pbc_int),
        tol=1e-8,
    )
    edges = []
    for i, j, s, dist in zip(c.tolist(), n.tolist(), np.rint(img).astype(int).tolist(), d):
        if dist < cutoff and not (i == j and s == [0, 0, 0]):
            edges.append((i, float(dist), j, tuple(s)))
    edges.sort()
    return (
        np.array([[e[2] for e in edges], [e[0] for e in edges]], np.int64).reshape(2, -1),
        np.array([e[3] for e in edges], np.int64).reshape(-1, 3),
        np.array([e[1] for e in edges], np.float64),
    )


def assert_same_order(nl, reference):
    edge_index, edge_shift, edge_dist = reference
    assert nl.edge_index.dtype == nl.edge_shift.dtype == np.int64
    assert nl.edge_dist.dtype == np.float64
    np.testing.assert_array_equal(nl.edge_index, edge_index)
    np.testing.assert_array_equal(nl.edge_shift, edge_shift)
    np.testing.assert_array_equal(nl.edge_dist, edge_dist)  # bitwise: same engine numbers


def tie_heavy_structures():
    """(pos, cell, pbc) of cells whose edges tie exactly in distance: a simple cubic
    supercell (every image shell ties 6-, 8-, 12-fold), one atom in tiny cells, a slab."""
    cubic = np.eye(3) * 2.0
    grid = np.array(list(itertools.product(range(2), repeat=3)), float) * 2.0
    return [
        (grid, cubic * 2, [True] * 3),
        (np.zeros((1, 3)), np.eye(3) * 1.5, [True] * 3),
        (
            np.array([[0.1, 0.2, 0.3]]),
            np.array([[2.0, 0, 0], [1.9, 0.6, 0], [0.3, 0.2, 1.7]]),
            [True] * 3,
        ),
        (grid[:4] * 1.5, np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 0]]), [True, True, False]),
    ]


def test_canonical_order_matches_a_python_sort():
    cases = [
        (s.cart_coords, s.lattice.matrix, [True] * 3)
        for s in real_structures("mp_20_subset.csv.gz", 12, 173)
    ]
    cases += [
        (s.cart_coords, s.lattice.matrix, [True] * 3)
        for s in real_structures("perov_5.csv.gz", 4, 700)
    ]
    cases += tie_heavy_structures()
    for pos, cell, pbc in cases:
        assert_same_order(
            neighbour_list(pos, cell, pbc, CUTOFF), python_sorted_list(pos, cell, pbc, CUTOFF)
        )


def test_batch_lists_equal_one_python_sort_each():
    from fingerprint_pretrain.builder.neighbors import neighbour_lists

    cases = [
        (s.cart_coords, s.lattice.matrix, [True] * 3)
        for s in real_structures("mp_20_subset.csv.gz", 6, 211)
    ]
    cases = cases[:3] + tie_heavy_structures() + cases[3:]
    lists = neighbour_lists(cases, CUTOFF)
    assert len(lists) == len(cases)
    for nl, (pos, cell, pbc) in zip(lists, cases):
        assert_same_order(nl, python_sorted_list(pos, cell, pbc, CUTOFF))
    assert neighbour_lists([], CUTOFF) == []


def test_exact_fallback_when_keys_do_not_fit(monkeypatch):
    """Keys too wide for one int64 (forced here) fall back to the four-key lexsort, which gives
    the same lists."""
    from fingerprint_pretrain.builder import neighbors

    monkeypatch.setattr(neighbors, "_KEY_LIMIT", 1)
    cases = [
        (s.cart_coords, s.lattice.matrix, [True] * 3)
        for s in real_structures("mp_20_subset.csv.gz", 3, 311)
    ] + tie_heavy_structures()
    for nl, (pos, cell, pbc) in zip(neighbors.neighbour_lists(cases, CUTOFF), cases):
        assert_same_order(nl, python_sorted_list(pos, cell, pbc, CUTOFF))
