"""Complete periodic neighbour lists.

A neighbour list here holds *every* pair (centre i, neighbour j, image shift S) with
``0 < |pos[j] + S @ cell - pos[i]| < cutoff``, over all periodic images, for any cell: skewed,
tiny (one atom, cell sides far below the cutoff) or large. An atom's own periodic images are
neighbours; only the zero-shift self pair is excluded.

Engine: pymatgen's Cython ``find_points_in_spheres`` (cell-list search over all images). It was
chosen by measurement against ASE, matscipy and vesin on ``perov_5`` and ``mp_20_subset``
(``bench/bench_build.py``; numbers in ``bench/results/build.md``, "Neighbour-list engines") and
is tested against a brute-force image enumeration and ASE's ``neighbor_list``
(``tests/builder/test_neighbors.py``).

Spelling (``builder`` and ``schemas``): British "neighbour" in prose and in every name the
project owns (:class:`NeighbourList`, :func:`neighbour_list`, ``NEIGHBOUR_POLICY``, the
manifest's ``neighbour_policy``); American only in third-party names (ASE's ``neighbor_list``,
``pymatgen.optimization.neighbors``) and in this module's import path ``builder.neighbors``,
kept because tests, benchmarks and other packages import it by that name.

Conventions (the store contract, see ``schemas``):
``edge_index[0]`` = neighbour j (source), ``edge_index[1]`` = centre i (target);
``vec = pos[j] + edge_shift @ cell - pos[i]``; edges of each centre are sorted nearest first
(ties broken by j, then shift) so a consumer takes the nearest K by slicing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from fingerprint_pretrain.schemas.record import edge_vectors
from pymatgen.optimization.neighbors import find_points_in_spheres

__all__ = ["NeighbourList", "neighbour_list"]


@dataclass(frozen=True)
class NeighbourList:
    """Edges of one structure.

    Attributes:
        edge_index: (2, E) int64; row 0 = neighbour j (source), row 1 = centre i (target).
        edge_shift: (E, 3) int64 integer image offsets of j, in units of the lattice vectors.
        edge_dist: (E,) float64 distances, Å.
        cutoff: the radius the list is complete within, Å.
    """

    edge_index: np.ndarray
    edge_shift: np.ndarray
    edge_dist: np.ndarray
    cutoff: float

    @property
    def num_edges(self) -> int:
        return int(self.edge_dist.shape[0])

    def edge_vectors(self, pos: np.ndarray, cell: np.ndarray) -> np.ndarray:
        """(E, 3) float64 vectors r_j + S·L − r_i, Å."""
        return edge_vectors(pos, cell, self.edge_index, self.edge_shift)

    def within(self, radius: float) -> NeighbourList:
        """The sub-list of edges with distance < radius (order kept: still nearest first)."""
        if radius >= self.cutoff:
            return self
        keep = self.edge_dist < radius
        return NeighbourList(
            self.edge_index[:, keep], self.edge_shift[keep], self.edge_dist[keep], float(radius)
        )


def _search_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """A non-singular cell for the search engine.

    Lattice vectors along non-periodic directions only orient the search, so when the cell is
    singular (a molecule's zero cell, a slab without a c vector) those vectors are replaced by
    unit vectors completing the periodic ones to an orthogonal basis (Gram-Schmidt). Shifts
    along non-periodic directions are always 0, so the stored cell stays valid.
    """
    if not pbc.any():
        return np.eye(3)
    if abs(np.linalg.det(cell)) > 1e-8:
        return cell

    def orthogonal_part(v: np.ndarray, basis: list[np.ndarray]) -> np.ndarray:
        v = v.astype(np.float64).copy()
        for b in basis:
            v -= (v @ b) * b
        return v

    basis: list[np.ndarray] = []  # orthonormal span of the periodic vectors
    for k in range(3):
        if pbc[k]:
            v = orthogonal_part(cell[k], basis)
            basis.append(v / np.linalg.norm(v))
    out = cell.copy()
    candidates = iter(np.eye(3))
    for k in range(3):
        if pbc[k]:
            continue
        v = orthogonal_part(next(candidates), basis)
        while np.linalg.norm(v) < 1e-6:
            v = orthogonal_part(next(candidates), basis)
        out[k] = v / np.linalg.norm(v)
        basis.append(out[k])
    return out


def _shift_keys(shift: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sort keys ordering (E, 3) int64 shifts lexicographically (component 0 slowest), least
    significant first as ``np.lexsort`` wants them.

    One packed key (21 bits per component) keeps the sort at four keys instead of six; shifts
    too large to pack (|s| >= 2^20 cells, only in absurdly skewed cells) keep three keys, so
    the order is always exact (never wrapped).
    """
    bound = 1 << 20
    if shift.size == 0 or int(np.abs(shift).max()) < bound:
        biased = shift + bound
        return ((biased[:, 0] << 42) | (biased[:, 1] << 21) | biased[:, 2],)
    return shift[:, 2], shift[:, 1], shift[:, 0]


def neighbour_list(
    pos: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray | tuple[bool, bool, bool],
    cutoff: float,
    sort: bool = True,
) -> NeighbourList:
    """All neighbour pairs within ``cutoff`` over periodic images, grouped by centre.

    Args:
        pos: (N, 3) float64 Cartesian positions, Å.
        cell: (3, 3) float64 lattice vectors as rows, Å. Ignored along non-periodic directions
            (but must be non-singular; give any box for a molecule).
        pbc: (3,) bool periodicity per lattice vector.
        cutoff: radius, Å (> 0). Pairs with distance strictly below it are kept.
        sort: order each centre's edges nearest first (ties by j, then shift), the store's
            canonical order. ``False`` keeps the engine's order within each centre: enough for
            descriptors, and much cheaper for the wide lists of GMP (~2,000 edges per atom).

    Returns:
        A :class:`NeighbourList`, edges grouped by ascending centre i.
    """
    pos = np.ascontiguousarray(pos, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    pbc_int = np.asarray(pbc, dtype=np.int64).reshape(3)
    if cutoff <= 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff}")
    n = len(pos)
    if n == 0:
        return NeighbourList(
            np.zeros((2, 0), np.int64), np.zeros((0, 3), np.int64), np.zeros(0), float(cutoff)
        )
    centre, neighbour, shift, dist = find_points_in_spheres(
        pos, pos, float(cutoff), pbc_int, _search_cell(cell, pbc_int), tol=1e-8
    )
    # The engine includes pairs at d <= cutoff (+tol) and the zero-shift self pair: drop both.
    # (Its distances are |pos[j] + shift @ cell - pos[i]| to rounding; the tests check them
    # against a brute-force enumeration to 1e-12 Å.)
    keep = dist < cutoff
    same = np.flatnonzero(centre == neighbour)
    keep[same[~np.rint(shift[same]).any(axis=1)]] = False
    centre, neighbour, dist = centre[keep], neighbour[keep], dist[keep]
    shift = np.rint(shift[keep]).astype(np.int64)
    if sort:
        order = np.lexsort((*_shift_keys(shift), neighbour, dist, centre))
    elif np.all(centre[1:] >= centre[:-1]):  # the engine already groups by centre
        order = slice(None)
    else:
        order = np.argsort(centre, kind="stable")
    return NeighbourList(
        np.stack([neighbour[order], centre[order]]).astype(np.int64),
        shift[order],
        dist[order],
        float(cutoff),
    )
