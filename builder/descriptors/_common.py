"""Shared machinery of the radial descriptor families (wACSF, EAD).

Both families are sums over the neighbours j of a centre i of per-edge weights times radial
Gaussians on a grid of shifts:

    ρ[i, w, a, k] = Σ_j weight[w, ij] · exp(−η_a (d_ij − Rs_k)²)

(wACSF: one weight, Z_j f_c(d_ij), and the output is ρ; EAD: one weight per Cartesian monomial,
Z_j f_c x^lx y^ly z^lz, and the output is Σ_w R[q, w] ρ_w² for a small matrix R that also holds
the monomial normalisation). :func:`gaussian_moments` evaluates either for a block of centres
whose edges sit in a padded (centre, slot) table (:func:`padded_index`; padding slots carry
weight 0). wACSF's default path is a fused variant in :mod:`builder.descriptors.wacsf`.

Two evaluation paths, both vectorised over centres and neighbours, chosen per η by a cached
:class:`GaussianPlan`:

* **direct**: every exponent −η(d − Rs)² = −η d² + 2η Rs d − η Rs² of the block comes out of one
  matrix product ``coefficients @ [d², d, 1]`` (inner dimension 3), then one in-place ``exp`` and
  one batched matrix product (weights × slots)·(slots × shifts) per centre. The exponent's
  absolute rounding error is ≈ 4 ε η max(d, Rs)² (≤ 1e-12 for η ≤ 10, d, Rs ≤ 12 Å), which is the
  relative error of the Gaussian.
* **factorised** (a regular Rs grid, the EAD's 160/240-point grids): split the grid into blocks
  of B consecutive shifts R_b + tΔ (t = 0 … B−1). Within a block

      exp(−η (d − R_b − tΔ)²) = A_b(d) · P_t(d) · S_bt,
      A_b = exp(−η (d − R_b)²),  P_t = exp(2ηΔ t d),  S_bt = exp(−2ηΔ t R_b − η Δ² t²),

  so ρ[w, b, t] = S_bt · T[w, b, t] with T[w, b, t] = Σ_j (weight_w A_b)(d_j) · P_t(d_j): one exp
  per (edge, block) and per (edge, step) instead of one per (edge, shift), and the sum over
  neighbours is a matrix product per centre (rows = blocks × weights, columns = steps). This
  is the recurrence exp(−η(d − Rs − δ)²) = exp(−η(d − Rs)²) · exp(2ηδ(d − Rs)) · exp(−ηδ²)
  unrolled over a block, restarted exactly at every block. In the
  squared mode the scale is applied after the reduction, Σ_w R ρ_w² = S² Σ_w R T_w², so the
  per-shift scaling touches Q instead of W rows. Block shape: minimises the elementwise work per
  edge, blocks × (1 exp + W products) + B exps, preferring block counts that divide the grid
  (EAD sets 1 / 3: 5 × 32 and 8 × 20 for all η; set 2: 10 × 24, 15 × 16, 20 × 12 for η ≤ 2, 5,
  10); the η sharing a shape run as one group (a handful of numpy calls per group).

  Numerical safety. Every exponent that appears (2ηΔt d in P, 2ηΔtR_b + ηΔ²t² in S, doubled in
  the squared mode) is bounded by 2ηW·max(d_max, |Rs|) + ηW² with W = (B−1)Δ the block width; the
  plan keeps it ≤ 700 (≤ 350 when squaring), so nothing overflows. Underflow is the only way to
  lose accuracy: if A_b underflows (η (d − R_b)² > 708) while some shift of the block is close to
  d. When η·D² ≤ 700 for D the largest |d − Rs| possible, no Gaussian of the table can underflow
  at all (EAD sets 1 and 3); otherwise the block width is capped at W ≤ 0.9 (√708 − √600)/√η,
  which guarantees that whenever A_b underflows every Gaussian of that block is below
  e^−600 ≈ 1e-261. Values above that keep a relative error ~1e-13 (tests compare both paths to
  ~1e-12); values below it may come out as 0 (the direct path flushes below e^−745 anyway).
  Where a grid is irregular, shorter than ``_MIN_FACTORISED_SHIFTS`` or fails these checks, the
  direct path is used.

Memory: callers process centres in blocks (:func:`centre_blocks`) so the work arrays stay near
``_WORK_ELEMENTS`` doubles; for structures of up to a few hundred atoms that is one block, and
the loop over blocks is the only Python loop over atoms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from fingerprint_pretrain.builder.neighbors import NeighbourList
from fingerprint_pretrain.schemas.record import edge_vectors as record_edge_vectors

__all__ = [
    "GaussianPlan",
    "blocked_moments",
    "centre_blocks",
    "check_radius",
    "cosine_cutoff",
    "edge_vectors",
    "format_value",
    "gaussian_moments",
    "gaussian_plan",
    "edge_starts",
    "padded_index",
]

# Largest exponent magnitude any intermediate may reach (exp overflows above ~709.78).
_EXP_LIMIT = 700.0
# If A_b = exp(−η (d − R_b)²) underflows (exponent < −708), every Gaussian of a block of width
# W ≤ (√708 − √600)/√η is below e^−600. 0.9 is a safety factor.
_BLOCK_WIDTH_TIMES_SQRT_ETA = 0.9 * (math.sqrt(708.0) - math.sqrt(600.0))
# The factorised path pays off only on long regular grids (EAD: 160-240 shifts).
_MIN_FACTORISED_SHIFTS = 16
# Target size of the largest work array of one block of centres, in float64 elements (16 MB).
_WORK_ELEMENTS = 1 << 21
# Cost of one exp (with its argument) relative to one elementwise product, measured with numpy
# 2.x on the AVX-512 machine of bench/results (0.7 + 0.4 ns vs 0.4 ns per element).
_EXP_COST = 2.75


def cosine_cutoff(d: np.ndarray, rc: float, inside: bool = False) -> np.ndarray:
    """f_c(d) = ½ (cos(π d / rc) + 1) for d < rc, else 0 (dimensionless, same shape as d).

    ``inside=True`` promises d < rc everywhere (a neighbour list cut at rc) and skips the mask.
    """
    d = np.asarray(d, dtype=np.float64)
    value = np.cos(d * (np.pi / rc))
    value *= 0.5
    value += 0.5
    if not inside:
        value[d >= rc] = 0.0
    return value


def edge_vectors(nl: NeighbourList, pos: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """(E, 3) float64 r_j + S·L − r_i, Å, of a neighbour list
    (:func:`fingerprint_pretrain.schemas.record.edge_vectors`)."""
    return record_edge_vectors(pos, cell, nl.edge_index, nl.edge_shift)


def format_value(value: float) -> str:
    """Short, stable text of a parameter value for feature names (``0.4``, ``5``, ``2.35``)."""
    return f"{float(value):.6g}"


def check_radius(nl: NeighbourList, radius: float, family: str) -> NeighbourList:
    """``nl`` restricted to ``radius``; refuses a list that is not complete within ``radius``."""
    if nl.cutoff < radius * (1.0 - 1e-12):
        raise ValueError(
            f"{family}: neighbour list cutoff {nl.cutoff} Å is below the required radius "
            f"{radius} Å (see required_radius)"
        )
    return nl.within(radius)


def centre_blocks(counts: np.ndarray, work_per_edge: int) -> Iterator[tuple[int, int]]:
    """Consecutive centre ranges whose work arrays stay near ``_WORK_ELEMENTS`` doubles.

    Args:
        counts: (N,) neighbour count of each centre.
        work_per_edge: doubles of work array per (padded) edge.

    Yields:
        (first, last): centres first..last−1.
    """
    n_atoms = len(counts)
    max_edges = max(1, _WORK_ELEMENTS // max(1, work_per_edge))
    if n_atoms * int(counts.max(initial=0)) <= max_edges:
        yield 0, n_atoms
        return
    # Padded size of centres first..last−1 is (last − first) · max(counts): grow greedily.
    first = 0
    while first < n_atoms:
        last, width = first, 0
        while last < n_atoms:
            width_next = max(width, int(counts[last]))
            if last > first and (last + 1 - first) * width_next > max_edges:
                break
            last, width = last + 1, width_next
        yield first, last
        first = last


def edge_starts(centre: np.ndarray, n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts, starts): neighbour count and first edge of each centre, for edges sorted by
    centre (the :func:`fingerprint_pretrain.builder.neighbors.neighbour_list` order)."""
    counts = np.bincount(centre, minlength=n_atoms)
    starts = np.cumsum(counts)
    starts -= counts
    return counts, starts


def padded_index(counts: np.ndarray, starts: np.ndarray, n_edges: int) -> np.ndarray:
    """Gather index of a padded (centre, slot) table, flattened: (C · S,) int64.

    Slot s of centre c holds edge ``starts[c] + s`` (nearest first) or, past the centre's
    ``counts[c]`` neighbours, ``n_edges``: the index of a zero column that callers append to
    their per-edge arrays (shape (..., n_edges + 1)), so ``np.take(values, index, axis=-1)``
    fills padding slots with 0. Gathering is ~2x faster than a fancy-index scatter.
    """
    width = int(counts.max(initial=0))
    slot = np.arange(width)
    index = starts[:, None] + slot[None, :]
    index[slot[None, :] >= counts[:, None]] = n_edges
    return index.reshape(-1)


@dataclass(frozen=True)
class _FactorisedGroup:
    """Constants of the factorised path for a group of g η sharing one block shape (B, blocks)."""

    indices: tuple[int, ...]  # positions of the group's η in etas
    length: int  # B
    n_blocks: int
    anchor_coefficients: np.ndarray  # (g · blocks, 3): −η (d − R_b)² = c · [d², d, 1]
    power_coefficients: np.ndarray  # (3, g · B): 2ηΔ t d = c · [d², d, 1]
    scale: np.ndarray  # (g, 1, blocks, 1, B): S_bt (S_bt² in the squared mode)


@dataclass(frozen=True)
class GaussianPlan:
    """Precomputed constants of :func:`gaussian_moments` for one parameter set.

    Attributes:
        n_etas, n_rs: grid sizes.
        direct: indices of the η evaluated directly.
        direct_coefficients: (len(direct) · n_rs, 3) exponent coefficients of [d², d, 1].
        factorised: groups of η evaluated by the factorised path, one per block shape.
    """

    n_etas: int
    n_rs: int
    direct: tuple[int, ...]
    direct_coefficients: np.ndarray
    factorised: tuple[_FactorisedGroup, ...]

    def work_per_edge(self, n_weights: int) -> int:
        """Largest work-array size per padded edge (doubles), for :func:`centre_blocks`."""
        sizes = [len(self.direct) * self.n_rs]
        sizes += [
            len(f.indices) * (f.n_blocks * (n_weights + 1) + f.length) for f in self.factorised
        ]
        return max(sizes) + 3


def _regular_step(rs: np.ndarray) -> float | None:
    """Grid step Δ if ``rs`` is an increasing regular grid (to 1e-9 relative), else None."""
    if len(rs) < 2:
        return None
    step = (rs[-1] - rs[0]) / (len(rs) - 1)
    if step <= 0 or np.max(np.abs(np.diff(rs) - step)) > 1e-9 * step:
        return None
    return float(step)


def _block_shape(eta, rs, step, d_max, n_weights, squared) -> tuple[int, int] | None:
    """(B, blocks) of the factorised path for one η, or None where it is unsafe."""
    n = len(rs)
    r_min, r_max = float(rs[0]), float(rs[-1])
    if r_min < 0.0:
        return None  # the bounds below assume shifts ≥ 0 (then S ≤ 1 and T ≥ ρ)
    reach = max(d_max, r_max)
    limit = _EXP_LIMIT / (2.0 if squared else 1.0)
    # Overflow bound on every exponent: 2ηW·reach + ηW² ≤ limit.
    max_width = -reach + math.sqrt(reach * reach + limit / eta)
    largest_gap = max(d_max - r_min, r_max)  # max |d − Rs| over d ∈ [0, d_max]
    if eta * largest_gap**2 > _EXP_LIMIT:  # some Gaussian may underflow: cap the block width
        max_width = min(max_width, _BLOCK_WIDTH_TIMES_SQRT_ETA / math.sqrt(eta))
    max_length = int(max_width / step) + 1
    if max_length < 2:
        return None

    # Elementwise cost per edge, in units of one product: blocks × (one exp + W products) plus
    # B exps. Block counts that divide the grid exactly (no padded shifts) are preferred.
    def cost(n_blocks: int) -> float:
        return n_blocks * (_EXP_COST + n_weights) + -(-n // n_blocks) * _EXP_COST

    feasible = [k for k in range(1, n + 1) if -(-n // k) <= max_length]
    best = min(feasible, key=cost)
    exact = [k for k in feasible if n % k == 0 and cost(k) <= 1.25 * cost(best)]
    n_blocks = min(exact, key=cost) if exact else best
    return -(-n // n_blocks), n_blocks


def _factorised_group(indices, etas, rs, step, length, n_blocks, squared) -> _FactorisedGroup:
    block_start = rs[0] + step * length * np.arange(n_blocks)  # R_b
    t = np.arange(length, dtype=np.float64)
    anchor, power, log_scale = [], [], []
    for a in indices:
        eta = float(etas[a])
        anchor.append(
            np.stack([np.full(n_blocks, -eta), 2 * eta * block_start, -eta * block_start**2], 1)
        )
        power.append(np.stack([np.zeros(length), 2.0 * eta * step * t, np.zeros(length)]))
        log_scale.append(
            -2.0 * eta * step * np.multiply.outer(block_start, t) - eta * step**2 * t * t
        )
    log_scale = np.array(log_scale) * (2.0 if squared else 1.0)
    return _FactorisedGroup(
        indices=tuple(indices),
        length=length,
        n_blocks=n_blocks,
        anchor_coefficients=np.concatenate(anchor),
        power_coefficients=np.concatenate(power, axis=1),
        scale=np.exp(log_scale)[:, None, :, None, :],
    )


@lru_cache(maxsize=64)
def _cached_plan(etas: bytes, rs: bytes, d_max, n_weights, squared, method) -> GaussianPlan:
    etas_arr = np.frombuffer(etas, dtype=np.float64)
    rs_arr = np.frombuffer(rs, dtype=np.float64)
    step = _regular_step(rs_arr) if method != "direct" else None
    min_shifts = _MIN_FACTORISED_SHIFTS if method == "auto" else 2
    shapes: dict[tuple[int, int], list[int]] = {}
    direct = []
    for a, eta in enumerate(etas_arr):
        shape = None
        if step is not None and len(rs_arr) >= min_shifts and eta > 0:
            shape = _block_shape(float(eta), rs_arr, step, d_max, n_weights, squared)
        if shape is None:
            direct.append(a)
        else:
            shapes.setdefault(shape, []).append(a)
    groups = tuple(
        _factorised_group(indices, etas_arr, rs_arr, step, length, n_blocks, squared)
        for (length, n_blocks), indices in shapes.items()
    )
    eta_col = np.repeat(etas_arr[direct], len(rs_arr))
    rs_col = np.tile(rs_arr, len(direct))
    coefficients = np.stack([-eta_col, 2.0 * eta_col * rs_col, -eta_col * rs_col * rs_col], 1)
    return GaussianPlan(len(etas_arr), len(rs_arr), tuple(direct), coefficients, groups)


def gaussian_plan(
    etas: Sequence[float],
    rs: Sequence[float],
    d_max: float,
    n_weights: int,
    squared: bool,
    method: str = "auto",
) -> GaussianPlan:
    """The (cached) evaluation plan of :func:`gaussian_moments`.

    Args:
        etas: Gaussian exponents η, Å⁻² (> 0).
        rs: Gaussian shifts Rs, Å.
        d_max: an upper bound of the distances (the cutoff), Å.
        n_weights: number of weights per edge W.
        squared: whether the output is Σ_w R ρ_w² (True) or ρ (False).
        method: ``"auto"`` (factorised where safe and the grid is regular and long),
            ``"direct"``, or ``"factorised"`` (on any regular grid, still only where safe).
    """
    if method not in ("auto", "direct", "factorised"):
        raise ValueError(f"unknown method {method!r}")
    return _cached_plan(
        np.asarray(etas, dtype=np.float64).tobytes(),
        np.asarray(rs, dtype=np.float64).tobytes(),
        float(d_max),
        int(n_weights),
        bool(squared),
        method,
    )


def gaussian_moments(
    plan: GaussianPlan,
    dist: np.ndarray,
    weights: np.ndarray,
    n_rows: int,
    reduce: np.ndarray | None = None,
) -> np.ndarray:
    """Gaussian moments of a block of centres.

    Args:
        plan: from :func:`gaussian_plan` (with ``squared = reduce is not None``).
        dist: (C · S,) float64 padded distances (centre-major), Å; 0 in padding slots.
        weights: (W, C · S) float64 per-edge weights, 0 in padding slots.
        n_rows: number of centres C.
        reduce: optional (Q, W) matrix R.

    Returns:
        (C, W, n_etas, n_rs) ρ[c, w, a, k] = Σ_s weights[w, c, s] exp(−η_a (d[c, s] − Rs_k)²),
        or, with ``reduce``, (C, Q, n_etas, n_rs) Σ_w R[q, w] ρ[c, w, a, k]².
    """
    n_weights, size = weights.shape
    n_slots = size // n_rows if n_rows else 0
    n_out = n_weights if reduce is None else reduce.shape[0]
    out = np.empty((n_rows, n_out, plan.n_etas, plan.n_rs))
    if n_slots == 0:
        out.fill(0.0)
        return out
    powers = np.empty((3, size))  # [d², d, 1]
    np.multiply(dist, dist, out=powers[0])
    powers[1] = dist
    powers[2] = 1.0
    # Long contiguous (·, C·S) rows keep numpy's elementwise loops fast; per-centre matrix views
    # (row stride C·S) go to BLAS as they are.
    per_centre = weights.reshape(n_weights, n_rows, n_slots).transpose(1, 0, 2)  # (C, W, S)
    if plan.direct:
        n_direct = len(plan.direct) * plan.n_rs
        gauss = powers.T @ plan.direct_coefficients.T  # (C·S, ·): −η (d − Rs)²
        np.exp(gauss, out=gauss)
        rho = np.matmul(per_centre, gauss.reshape(n_rows, n_slots, n_direct))  # (C, W, ·)
        if reduce is not None:
            np.multiply(rho, rho, out=rho)
            rho = np.matmul(reduce, rho)
        out[:, :, _index(plan.direct), :] = rho.reshape(n_rows, n_out, len(plan.direct), plan.n_rs)
    for f in plan.factorised:
        g, n_blocks, length = len(f.indices), f.n_blocks, f.length
        anchor = f.anchor_coefficients @ powers  # (g·blocks, C·S): −η (d − R_b)²
        np.exp(anchor, out=anchor)
        lhs = np.multiply(anchor[:, None, :], weights[None, :, :])  # (g·blocks, W, C·S)
        lhs = lhs.reshape(g, n_blocks * n_weights, n_rows, n_slots).transpose(0, 2, 1, 3)
        power = powers.T @ f.power_coefficients  # (C·S, g·B): 2ηΔ t d
        np.exp(power, out=power)
        rhs = power.reshape(n_rows, n_slots, g, length).transpose(2, 0, 1, 3)  # (g, C, S, B)
        sums = np.matmul(lhs, rhs)  # T, (g, C, blocks·W, B)
        sums = sums.reshape(g, n_rows, n_blocks, n_weights, length)
        if reduce is not None:
            np.multiply(sums, sums, out=sums)
            sums = np.matmul(reduce, sums)  # (g, C, blocks, Q, B)
        sums *= f.scale  # S (or S²)
        flat = sums.transpose(1, 3, 0, 2, 4).reshape(n_rows, n_out, g, n_blocks * length)
        out[:, :, _index(f.indices), :] = flat[..., : plan.n_rs]
    return out


def blocked_moments(
    plan: GaussianPlan,
    edge_values: np.ndarray,
    counts: np.ndarray,
    starts: np.ndarray,
    n_weights: int,
    weights_of: Callable[[np.ndarray], np.ndarray],
    reduce: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`gaussian_moments` of every centre, a block of centres (:func:`centre_blocks`) at a
    time, each block's edges gathered into its padded (centre, slot) table
    (:func:`padded_index`).

    Args:
        plan: from :func:`gaussian_plan`.
        edge_values: (V, E + 1) float64 per-edge values, row 0 the distance d, Å, and a last
            column of zeros (what padding slots get).
        counts, starts: (N,) from :func:`edge_starts`.
        n_weights: W, the weights per edge ``weights_of`` returns.
        weights_of: (V, C · S) padded values of a block -> (W, C · S) weights (0 in padding).
        reduce: optional (Q, W) matrix R, as in :func:`gaussian_moments`.

    Returns:
        (N, W or Q, n_etas, n_rs), the blocks' :func:`gaussian_moments` in centre order.
    """
    n_edges = edge_values.shape[1] - 1
    blocks = []
    for first, last in centre_blocks(counts, plan.work_per_edge(n_weights)):
        index = padded_index(counts[first:last], starts[first:last], n_edges)
        padded = np.take(edge_values, index, axis=1)  # (V, C·S)
        blocks.append(gaussian_moments(plan, padded[0], weights_of(padded), last - first, reduce))
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def _index(indices: tuple[int, ...]) -> slice | list[int]:
    """A slice for consecutive indices (a view: cheaper than fancy indexing), else a list."""
    if indices == tuple(range(indices[0], indices[0] + len(indices))):
        return slice(indices[0], indices[0] + len(indices))
    return list(indices)
