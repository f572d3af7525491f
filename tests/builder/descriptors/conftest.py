"""Structures and slow, obvious helpers shared by the descriptor tests.

Everything here is deliberately independent of the code under test: neighbours are found by
enumerating periodic images explicitly (not with :mod:`builder.neighbors`), supercells are built
by brute force, and the real structures come from the datasets parsed by pymatgen.
"""

from __future__ import annotations

import itertools
import math
from functools import cache

import numpy as np

from tests.conftest import real_structures

MP = "mp_20_subset.csv.gz"
PEROV = "perov_5.csv.gz"


def as_arrays(structure) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(z, pos, cell, pbc) plain arrays of a pymatgen Structure (periodic in 3D)."""
    return (
        np.array(structure.atomic_numbers, dtype=np.int64),
        np.array(structure.cart_coords, dtype=np.float64),
        np.array(structure.lattice.matrix, dtype=np.float64),
        np.ones(3, dtype=bool),
    )


@cache
def mixed_structures(
    n_mp: int = 10, n_perov: int = 10, max_atoms: int = 12
) -> tuple[tuple[str, tuple], ...]:
    """(label, (z, pos, cell, pbc)) of real structures from both datasets (spread over the files,
    at most ``max_atoms`` atoms each, to keep the oracles fast)."""
    chosen = []
    for name, count, step in ((MP, n_mp, 23), (PEROV, n_perov, 97)):
        picked = 0
        for k, structure in enumerate(real_structures(name, 4 * count, step)):
            if len(structure) <= max_atoms:
                chosen.append((f"{name.split('.')[0]}[{k * step}]", as_arrays(structure)))
                picked += 1
            if picked == count:
                break
    return tuple(chosen)


def small_real_structure(dataset: str = PEROV, index: int = 0):
    """(z, pos, cell, pbc) of one small real structure."""
    return as_arrays(real_structures(dataset, index + 1)[index])


def brute_force_neighbours(
    pos: np.ndarray, cell: np.ndarray, rc: float, centre: int
) -> list[tuple[int, np.ndarray]]:
    """Every (j, r_j + n·L − r_i) with 0 < |vector| < rc, by enumerating all image offsets n
    with |n_k| ≤ ceil(rc / plane spacing_k) + 1 (3D periodic)."""
    volume = abs(np.linalg.det(cell))
    reach = []
    for k in range(3):
        a, b = cell[(k + 1) % 3], cell[(k + 2) % 3]
        spacing = volume / np.linalg.norm(np.cross(a, b))
        reach.append(int(math.ceil(rc / spacing)) + 1)
    found = []
    for n in itertools.product(*(range(-r, r + 1) for r in reach)):
        shift = np.array(n, dtype=np.float64) @ cell
        for j in range(len(pos)):
            vector = pos[j] + shift - pos[centre]
            d = float(np.sqrt(vector @ vector))
            if 0.0 < d < rc:
                found.append((j, vector))
    return found


def supercell(z, pos, cell, matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(z, pos, cell, origin) of the supercell with lattice ``matrix @ cell`` (integer matrix),
    atoms found by brute force: every image of every atom whose fractional coordinates in the
    new cell lie in [0, 1); ``origin[k]`` is the primitive atom that supercell atom k copies."""
    matrix = np.asarray(matrix, dtype=np.int64)
    new_cell = matrix @ cell
    count = int(round(abs(np.linalg.det(matrix))))
    reach = int(np.abs(matrix).sum()) + 1
    inverse = np.linalg.inv(new_cell)
    out_pos, origin = [], []
    for n in itertools.product(range(-reach, reach + 1), repeat=3):
        shifted = pos + np.array(n, dtype=np.float64) @ cell
        frac = shifted @ inverse
        inside = np.all((frac >= -1e-9) & (frac < 1 - 1e-9), axis=1)
        out_pos.extend(shifted[inside])
        origin.extend(np.flatnonzero(inside))
    assert len(origin) == count * len(z), (len(origin), count, len(z))
    origin = np.array(origin, dtype=np.int64)
    return np.asarray(z)[origin], np.array(out_pos), new_cell, origin


def random_rotation(seed: int) -> np.ndarray:
    """A random 3x3 orthogonal matrix (proper or improper)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.diag(r))
