"""Weighted radial atom-centred symmetry functions (wACSF): label sets ``wacsfset1`` … ``wacsfset3``.

Definition (Behler G2 with the element weight g(Z_j) = Z_j, as in the paper and PyXtal_FF's
``atom_weighted=True``):

    G_i(η, Rs) = Σ_j Z_j exp(−η (d_ij − Rs)²) f_c(d_ij),  f_c(d) = ½ (cos(π d / Rc) + 1), d < Rc,

summed over every atom j in every periodic image with 0 < d_ij < Rc (an atom's own images
included). Units: η in Å⁻², Rs and Rc in Å; G carries the unit of Z (dimensionless).

Feature order (``feature_names``): η slowest, Rs fastest, i.e. column ``a · len(rs) + k`` holds
(etas[a], rs[k]), named ``eta=0.4,Rs=3``. This is PyXtal_FF's actual order (its docstring says
otherwise) and the same (η, Rs) order as the EAD blocks.

Decisions and why:

* **Cutoff Rc = 8 Å by default** (parameter ``rc``). No public configuration states the authors'
  wACSF cutoff; 8 Å is the GNN's own cutoff and the EAD cutoff of sets 1 and 3, and it covers the
  largest Rs of sets 1 and 3 (10 Å) only through Gaussian tails, exactly as a Behler G2 with
  Rs > Rc does elsewhere. Sets differ only in their (η, Rs) grids (paper Table 3).
* An atom without neighbours gets zeros (PyXtal_FF asserts; DScribe returns zeros).
* Evaluation: :func:`builder.descriptors._common.gaussian_moments` with one weight per edge
  (Z_j f_c(d_ij)). The wACSF grids are short and irregular (8, 5 and 14 shifts), so the direct path
  is taken: one exponent matrix product for all (η, Rs), one exp, one batched matrix-vector
  product per centre. On this hardware numpy's exp costs about two multiplications, so the
  factorised recurrence gains nothing on grids this short (measured in
  ``bench/bench_descriptors.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from builder.descriptors._common import (
    centre_blocks,
    check_radius,
    cosine_cutoff,
    edge_starts,
    format_value,
    gaussian_moments,
    gaussian_plan,
    padded_index,
)
from builder.neighbors import NeighbourList

__all__ = ["DEFAULT_RC", "WACSF_SETS", "feature_names", "featurize", "required_radius"]

#: Default cutoff radius, Å (see the module docstring).
DEFAULT_RC = 8.0

#: The paper's three wACSF sets (Table 3), complete keyword arguments for ``featurize``.
WACSF_SETS: dict[str, dict] = {
    "wacsfset1": {
        "etas": [0.01, 0.1, 0.4, 1.0, 3.5, 5.0],
        "rs": [0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0],
        "rc": DEFAULT_RC,
    },
    "wacsfset2": {
        "etas": [0.01, 0.1, 0.4, 1.0],
        "rs": [0.0, 1.0, 2.0, 3.0, 4.0],
        "rc": DEFAULT_RC,
    },
    "wacsfset3": {
        "etas": [0.01, 0.06, 0.1, 0.2, 0.4, 0.7, 1.0, 2.0, 3.5, 5.0],
        "rs": [0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
        "rc": DEFAULT_RC,
    },
}


def _validated(etas: Sequence[float], rs: Sequence[float], rc: float):
    etas = np.asarray(etas, dtype=np.float64).reshape(-1)
    rs = np.asarray(rs, dtype=np.float64).reshape(-1)
    if len(etas) == 0 or len(rs) == 0:
        raise ValueError("wACSF needs at least one eta and one Rs")
    if np.any(etas <= 0):
        raise ValueError(f"wACSF etas must be > 0, got {etas.tolist()}")
    if not rc > 0:
        raise ValueError(f"wACSF rc must be > 0, got {rc}")
    return etas, rs, float(rc)


def feature_names(etas: Sequence[float], rs: Sequence[float], rc: float = DEFAULT_RC) -> list[str]:
    """Names in output order: ``eta=<η>,Rs=<Rs>``, η slowest, Rs fastest."""
    etas, rs, _ = _validated(etas, rs, rc)
    return [f"eta={format_value(e)},Rs={format_value(r)}" for e in etas for r in rs]


def required_radius(etas: Sequence[float], rs: Sequence[float], rc: float = DEFAULT_RC) -> float:
    """Neighbour-list radius needed: the cutoff ``rc``, Å."""
    return _validated(etas, rs, rc)[2]


def featurize(
    z: np.ndarray,
    pos: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    nl: NeighbourList,
    etas: Sequence[float],
    rs: Sequence[float],
    rc: float = DEFAULT_RC,
    method: str = "auto",
) -> np.ndarray:
    """wACSF of every atom.

    Args:
        z: (N,) int atomic numbers.
        pos: (N, 3) float64 Cartesian positions, Å.
        cell: (3, 3) float64 lattice vectors as rows, Å.
        pbc: (3,) bool periodicity (already reflected in ``nl``).
        nl: neighbour list complete within ≥ ``rc`` (a wider one is cut to ``rc``).
        etas: Gaussian exponents η, Å⁻².
        rs: Gaussian centres Rs, Å.
        rc: cutoff radius, Å.
        method: evaluation path of :func:`~builder.descriptors._common.gaussian_moments`
            (results agree to ~1e-13; for benchmarks and tests).

    Returns:
        (N, len(etas)·len(rs)) float64, columns as in :func:`feature_names`.
    """
    del pos, cell, pbc  # distances come from the neighbour list
    etas, rs, rc = _validated(etas, rs, rc)
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    n_atoms = len(z)
    n_features = len(etas) * len(rs)
    nl = check_radius(nl, rc, "wACSF")
    if nl.num_edges == 0:
        return np.zeros((n_atoms, n_features))
    plan = gaussian_plan(etas, rs, rc, 1, squared=False, method=method)
    neighbour, centre = nl.edge_index
    n_edges = nl.num_edges
    # Per-edge [d, Z_j f_c(d)] and a trailing zero column for the padding slots.
    edge_values = np.zeros((2, n_edges + 1))
    edge_values[0, :n_edges] = nl.edge_dist
    edge_values[1, :n_edges] = cosine_cutoff(nl.edge_dist, rc)
    edge_values[1, :n_edges] *= np.take(z, neighbour)
    counts, starts = edge_starts(centre, n_atoms)
    blocks = []
    for first, last in centre_blocks(counts, plan.work_per_edge(1)):
        index = padded_index(counts[first:last], starts[first:last], n_edges)
        padded = np.take(edge_values, index, axis=1)  # (2, C·S)
        blocks.append(gaussian_moments(plan, padded[0], padded[1:], last - first))
    out = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    return out.reshape(n_atoms, n_features)
