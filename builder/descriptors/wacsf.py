"""Weighted radial atom-centred symmetry functions (wACSF): ``wacsfset1`` … ``wacsfset3``.

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
* Evaluation (``method="auto"``): on the paper's grids, the fused path. The weight is folded
  into the exponent, Z_j f_c exp(−η(d − Rs)²) = exp(−η d² + 2η Rs d − η Rs² + log(Z_j f_c)), so
  one matrix product [d², d, 1, log(Z f_c)] (E × 4) · coefficients (4 × |η||Rs|) gives every
  exponent of the structure, one in-place ``exp`` the terms, and one ``np.add.reduceat`` over the
  edges of each centre (the neighbour list is sorted by centre) the sums: three array passes, no
  padding. f_c > 0 for every d < Rc, so the logarithm is finite; the folded exponent's rounding
  is ~1e-13 relative. The paper's grids are short and irregular (8, 5 and 14 shifts), where the
  factorised recurrence of :mod:`builder.descriptors._common` cannot apply or gains nothing
  (numpy's exp costs about two multiplications here). On a regular grid of ≥ 16 shifts "auto"
  switches to it, where it is the faster one (``bench/results/wacsf_paths.md``). ``"direct"`` /
  ``"factorised"`` force the shared engine's paths (tests and benchmarks; results agree to
  ~1e-13).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from fingerprint_pretrain.builder.descriptors._common import (
    blocked_moments,
    centre_blocks,
    check_radius,
    cosine_cutoff,
    edge_starts,
    format_value,
    gaussian_plan,
)
from fingerprint_pretrain.builder.neighbors import NeighbourList

__all__ = ["DEFAULT_RC", "feature_names", "featurize", "required_radius"]

#: Default cutoff radius, Å (see the module docstring).
DEFAULT_RC = 8.0


def _validated(etas: Sequence[float], rs: Sequence[float], rc: float):
    """(etas, rs, rc, fused coefficients) as read-only float64 arrays and a float; raises
    ValueError on bad values. Cached: featurize is called once per structure."""
    return _validated_cached(tuple(np.ravel(etas).tolist()), tuple(np.ravel(rs).tolist()), rc)


@lru_cache(maxsize=32)
def _validated_cached(etas: tuple, rs: tuple, rc):
    etas_arr = np.array(etas, dtype=np.float64)
    rs_arr = np.array(rs, dtype=np.float64)
    if len(etas_arr) == 0 or len(rs_arr) == 0:
        raise ValueError("wACSF needs at least one eta and one Rs")
    if np.any(etas_arr <= 0):
        raise ValueError(f"wACSF etas must be > 0, got {list(etas)}")
    if not rc > 0:
        raise ValueError(f"wACSF rc must be > 0, got {rc}")
    # exponent of column (η, Rs) = [d², d, 1, log(Z f_c)] · (−η, 2η Rs, −η Rs², 1)
    eta_col, rs_col = np.repeat(etas_arr, len(rs_arr)), np.tile(rs_arr, len(etas_arr))
    coefficients = np.stack(
        [-eta_col, 2.0 * eta_col * rs_col, -eta_col * rs_col**2, np.ones_like(eta_col)]
    )
    for array in (etas_arr, rs_arr, coefficients):
        array.flags.writeable = False
    return etas_arr, rs_arr, float(rc), coefficients


def feature_names(etas: Sequence[float], rs: Sequence[float], rc: float = DEFAULT_RC) -> list[str]:
    """Names in output order: ``eta=<η>,Rs=<Rs>``, η slowest, Rs fastest."""
    etas, rs, _, _ = _validated(etas, rs, rc)
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
        method: ``"auto"`` (fused, or factorised on long regular grids: see the module
            docstring), ``"direct"`` or ``"factorised"`` (paths of
            :func:`~builder.descriptors._common.gaussian_moments`; results agree to ~1e-13).

    Returns:
        (N, len(etas)·len(rs)) float64, columns as in :func:`feature_names`.
    """
    del pos, cell, pbc  # distances come from the neighbour list
    etas, rs, rc, coefficients = _validated(etas, rs, rc)
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    n_atoms = len(z)
    n_features = len(etas) * len(rs)
    nl = check_radius(nl, rc, "wACSF")
    if nl.num_edges == 0:
        return np.zeros((n_atoms, n_features))
    neighbour, centre = nl.edge_index
    n_edges = nl.num_edges
    counts, starts = edge_starts(centre, n_atoms)
    weight = cosine_cutoff(nl.edge_dist, rc, inside=True)
    weight *= np.take(z, neighbour)
    plan = gaussian_plan(etas, rs, rc, 1, squared=False, method=method)
    if method == "auto" and not plan.factorised:
        return _fused(nl.edge_dist, weight, counts, starts, coefficients)
    # Per-edge [d, Z_j f_c(d)] and a trailing zero column for the padding slots.
    edge_values = np.zeros((2, n_edges + 1))
    edge_values[0, :n_edges] = nl.edge_dist
    edge_values[1, :n_edges] = weight
    out = blocked_moments(plan, edge_values, counts, starts, 1, lambda padded: padded[1:])
    return out.reshape(n_atoms, n_features)


def _fused(dist, weight, counts, starts, coefficients) -> np.ndarray:
    """Σ_j weight_j exp(−η (d_j − Rs)²) per centre by exponent GEMM, exp and reduceat."""
    n_atoms, n_features = len(counts), coefficients.shape[1]
    blocks = list(centre_blocks(counts, n_features))
    out = None if len(blocks) == 1 and counts.min() > 0 else np.zeros((n_atoms, n_features))
    for first, last in blocks:
        lo, hi = int(starts[first]), int(starts[last - 1] + counts[last - 1])
        if hi == lo:
            continue
        powers = np.empty((4, hi - lo))  # [d², d, 1, log(Z f_c)]
        np.multiply(dist[lo:hi], dist[lo:hi], out=powers[0])
        powers[1] = dist[lo:hi]
        powers[2] = 1.0
        np.log(weight[lo:hi], out=powers[3])
        terms = powers.T @ coefficients  # (E, |η||Rs|) exponents incl. log weight
        np.exp(terms, out=terms)
        if out is None:  # one block, every centre has neighbours: the common case
            return np.add.reduceat(terms, starts, axis=0)
        rows = first + np.flatnonzero(counts[first:last] > 0)  # reduceat needs non-empty segments
        out[rows] = np.add.reduceat(terms, starts[rows] - lo, axis=0)
    return out
