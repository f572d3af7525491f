"""Optional compiled EAD kernel: loading, evaluation plan and a NumPy-facing wrapper.

The C extension ``builder.descriptors._ead_kernel`` (``_ead_kernel.c``, built by ``setup.py``
when a C compiler is available; a failed build does not fail installation) evaluates
:func:`builder.descriptors.ead.featurize` in one fused pass per structure: per centre, per chunk
of up to 64 neighbours (``KC`` in the C source), the edge vectors, Z_j f_c and monomial
weights; per η the block anchors
A_b = exp(−η(d − R_b)²) and powers P_t = exp(2ηΔd)^t of each neighbour (the regular-grid
recurrence, restarted exactly at every block of B shifts) and the sums
T[n, η, bB + t] = Σ_j w_n A_b P_t, kept in L1 and scaled by S_bt per centre, as the NumPy
path's factorised evaluation does; or, where no block is safe, one exp per shift. Finally
x[l] = Σ_n R[l, n] ρ_n². Same definition, conventions and output as the NumPy path
(:mod:`builder.descriptors.ead`), which stays the reference and the fallback: the two agree to
~1e-12 relative (the kernel is within ~1e-13 of the term-by-term reference).

Loading (:mod:`builder.descriptors._kernel_loader`, shared by the three kernels).
:func:`available` is True when the extension imports, its calling convention
(``ABI``) matches this file, and (in a source tree, e.g. an editable install) the source hash
compiled into it equals the current ``_ead_kernel.c``: a stale build is refused rather than
used (rebuild with ``pip install -e .``). :func:`unavailable_reason` says why not. The variant
compiled for the widest instruction set this CPU supports is used (:func:`isas`: ``generic``
(SSE2, any x86-64), ``avx2`` (AVX2 + FMA), ``avx512`` (AVX-512F)); the environment variable
``FP_EAD_KERNEL`` overrides at import: ``0`` / ``off`` disables the kernel, a variant name
selects that variant. :data:`ISA` holds the variant in use (tests may monkeypatch it).

Plan (:func:`kernel_plan`, cached by the caller). Per η a block length B, a multiple of 8 (the
accumulation's vector tiles) of at most ``MAX_BLOCK`` shifts, the largest such that

* no exponent of P_t or S_bt exceeds 600 in magnitude (2ηW·max(Rc, Rs_max) + ηW² ≤ 600 with
  W = (B−1)Δ): P_t cannot overflow nor S_bt underflow, and the unscaled sums T ≤ e^600 Σ_j |w_j|
  keep a factor ~1e47 of headroom below the float64 maximum;
* where some Gaussian of the table can underflow (η·D² > 700 for D the largest |d − Rs|),
  W ≤ 0.9 (√708 − √600)/√η, so that whenever a block's anchor exp(−η(d − R_b)²) underflows
  (the kernel flushes exponents below −708 to 0) every Gaussian of the block is below e^−600:
  the argument of :mod:`fingerprint_pretrain.builder.descriptors._common`.

η that are integer multiples of a smaller η of the set (η = n·η_r, 2 ≤ n ≤ ``MAX_POWER``) share
its blocks where that saves work (:func:`shared_blocks`; all three registered sets are one such
group): the group takes the block shape of its steepest member, which is safe for every smaller
η, and the kernel raises η_r's anchors A_b to the n-th power instead of evaluating exps
(~(n + 2 log₂ n) ulp; flushed to 0 below DBL_MIN, as the exps flush below e^−708).

Irregular, negative or short grids, and η where not even B = 8 is safe (η = 60 Å⁻² on the
0.05 Å grid), are evaluated directly (one exp per shift). Exps are a vectorised polynomial
(~1 ulp); P_t = p^t by products (~t ulp, t < B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fingerprint_pretrain.builder.descriptors._common import (
    _BLOCK_WIDTH_TIMES_SQRT_ETA,
    _EXP_LIMIT,
    _regular_step,
)
from fingerprint_pretrain.builder.descriptors._kernel_loader import (
    checked_isa,
    load_extension,
    open_kernel,
)
from fingerprint_pretrain.builder.neighbors import NeighbourList

__all__ = [
    "ISA",
    "KernelPlan",
    "available",
    "featurize",
    "isas",
    "kernel_plan",
    "supports",
    "unavailable_reason",
]

# Calling convention of _ead_kernel.featurize; must equal the C file's EAD_KERNEL_ABI.
ABI = 3
# Longest block of the recurrence (P_t = p^t carries ~t ulp). Measured on the registered sets:
# 32 and 40 are equally fast, 24 and 48-64 (more exps, or more padding past |Rs|) slower.
MAX_BLOCK = 32
# Largest |exponent| of P_t and S_bt. The kernel sums T = Σ_j w_j A_b P_t over neighbours
# before scaling by S_bt, so |T| ≤ e^limit Σ_j |w_j|: 600 leaves a factor e^109 ≈ 1e47 for the
# weights' sum (Z f_c |x^lx y^ly z^lz| per neighbour) below the float64 maximum.
_KERNEL_EXP_LIMIT = 600.0
# Largest |η (d − Rs)²| handed to the kernel's exp (valid down to ~−1e15: a generous guard).
_MAX_EXPONENT = 1e12
_SOURCE = Path(__file__).with_name("_ead_kernel.c")


def _load():
    """(extension module or None, reason it is unavailable or None)."""
    return load_extension("_ead_kernel", ABI, _SOURCE, "FP_EAD_KERNEL")


# The extension (None when unavailable, with the reason), its variants, those this CPU runs, and
# the variant used by featurize (None when the kernel is unavailable).
_EXTENSION, _REASON, _ALL_ISAS, _SUPPORTED, ISA = open_kernel(*_load(), "FP_EAD_KERNEL")


def available() -> bool:
    """Whether the compiled kernel can be used."""
    return _EXTENSION is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    return _REASON


def isas() -> tuple[str, ...]:
    """Instruction-set variants this CPU can run, the widest last (empty when unavailable)."""
    return _SUPPORTED if _EXTENSION is not None else ()


@dataclass(frozen=True)
class KernelPlan:
    """Constants of one EAD parameter set, in the layout ``_ead_kernel.featurize`` reads.

    Attributes:
        iplan: int64 [L+1, M, |η|, |Rs|, scale_stride, anchor_stride, (B, blocks, h, source,
            n) per η (B = 0: direct; h: the anchor's offset in its block; source: an earlier
            η with η = n·η_source and the same blocks, whose anchors A_b the kernel raises to
            the n-th power instead of evaluating exps, or −1 with n = 1), (source monomial,
            axis) per monomial 1 … M−1].
        dplan: float64 [Rc, Δ, η…, Rs…, reduce ((L+1) × M), S (|η| × scale_stride),
            anchors R_b (|η| × anchor_stride), lifts c_b (|η| × anchor_stride): A_b =
            exp(−η(d − R_b)² + c_b), c_b the largest exponent of S_b before it was divided out].
        n_features: (L+1)·|η|·|Rs|.
        shapes: (B, blocks) per η, for reports and tests.
        offsets: h per η (0 or B/2), for reports and tests.
        sources: (source η index or −1, n) per η, for reports and tests.
    """

    iplan: np.ndarray
    dplan: np.ndarray
    n_features: int
    shapes: tuple[tuple[int, int], ...]
    offsets: tuple[int, ...] = ()
    sources: tuple[tuple[int, int], ...] = ()


def block_shape(eta: float, rs: np.ndarray, step: float | None, d_max: float) -> tuple[int, int]:
    """(B, h) of the kernel's recurrence for one η: block length (0: evaluate directly) and the
    offset of the anchor in its block, 0 (the first shift) or B/2 (the middle one).

    W is the largest distance of a block's shift from its anchor: (B − 1)Δ for h = 0, hΔ for
    h = B/2. Anchoring in the middle halves W for a given B, so where the underflow cap binds
    (steep Gaussians on a long grid: set 2's η = 5 and 10) blocks twice as long are safe.
    """
    if step is None or rs[0] < 0.0:
        return 0, 0
    reach = max(d_max, float(rs[-1]))
    cap = min(MAX_BLOCK, -(-len(rs) // 8) * 8)
    # Every exponent of P_t and S_bt: 2ηW·reach + ηW² ≤ limit (_KERNEL_EXP_LIMIT; half of it
    # for a middle anchor, whose A_b carries the largest exponent of S_b: see kernel_plan).
    first = min(int(_max_width(eta, rs, d_max, reach, _KERNEL_EXP_LIMIT) / step) + 1, cap)
    first -= first % 8  # 0 (direct) below 8
    middle = min(2 * int(_max_width(eta, rs, d_max, reach, _KERNEL_EXP_LIMIT / 2) / step), cap)
    middle -= middle % 8
    return (middle, middle // 2) if middle > first else (first, 0)


def _max_width(eta: float, rs: np.ndarray, d_max: float, reach: float, limit: float) -> float:
    """Largest W (Å) with 2ηW·reach + ηW² ≤ limit, capped where some Gaussian may underflow."""
    max_width = -reach + math.sqrt(reach * reach + limit / eta)
    largest_gap = max(d_max - float(rs[0]), float(rs[-1]))
    if eta * largest_gap**2 > _EXP_LIMIT:  # some Gaussian may underflow: cap the block width
        max_width = min(max_width, _BLOCK_WIDTH_TIMES_SQRT_ETA / math.sqrt(eta))
    return max_width


# Largest n of a derived η (A_b = A_source^n: ~(n + 2 log2 n) ulp).
MAX_POWER = 16


def _eta_cost(shape: tuple[int, int], n_rs: int, n_mono: int, derived: bool) -> float:
    """Work per edge of one block η, in exps: its exps (none for the anchors of a derived η)
    plus the block weights w_m·A_b (M·blocks products, ~8 per exp)."""
    length, offset = shape
    blocks = -(-n_rs // length)
    return (0 if derived else blocks) + 1 + (offset > 0) + n_mono * blocks / 8


def shared_blocks(
    etas: np.ndarray, own: list[tuple[int, int]], n_rs: int, n_mono: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Blocks shared between η that are integer multiples of each other.

    Where η = n·η_r (2 ≤ n ≤ MAX_POWER) for an earlier root η_r with the same blocks, the
    kernel takes the anchors A_b = exp(−η(d − R_b)² + c_b) as (A_b of η_r)^n (with c_b = n
    times the root's) instead of evaluating their exps. A group takes the block shape (B, h) of
    its steepest member, safe for every smaller η (both bounds of :func:`block_shape` only
    loosen as η decreases); an η joins a group when that lowers the work per edge
    (:func:`_eta_cost`) of the group and the η together.

    Args:
        etas: (A,) exponents, Å⁻².
        own: (B, h) of each η alone (:func:`block_shape`).
        n_rs: |Rs|.
        n_mono: M, monomials.

    Returns:
        (B, h) per η, and (source index or −1, n) per η.
    """
    shapes = list(own)
    sources = [(-1, 1)] * len(etas)
    members: dict[int, list[int]] = {}  # root -> its derived etas
    for a, eta in enumerate(etas):
        if own[a][0] == 0:
            continue
        best, best_gain = None, 0.0
        for root in members:
            ratio = float(eta) / float(etas[root])
            n = round(ratio)
            if not (2 <= n <= MAX_POWER and n * float(etas[root]) == float(eta)):
                continue
            group = [root, *members[root]]
            steepest = max(float(etas[g]) for g in group)
            shape = own[a] if float(eta) > steepest else shapes[root]
            before = sum(_eta_cost(shapes[g], n_rs, n_mono, g != root) for g in group)
            before += _eta_cost(own[a], n_rs, n_mono, False)
            after = sum(_eta_cost(shape, n_rs, n_mono, g != root) for g in [*group, a])
            if before - after > best_gain:
                best, best_gain = (root, n, shape), before - after
        if best is None:
            members[a] = []
            continue
        root, n, shape = best
        for g in [root, *members[root]]:
            shapes[g] = shape
        members[root].append(a)
        shapes[a] = shape
        sources[a] = (root, n)
    return shapes, sources


def block_length(eta: float, rs: np.ndarray, step: float | None, d_max: float) -> int:
    """Block length B of the kernel's recurrence for one η (0: evaluate directly)."""
    return block_shape(eta, rs, step, d_max)[0]


def kernel_plan(
    etas: np.ndarray,
    rs: np.ndarray,
    rc: float,
    recursion: tuple[tuple[int, int], ...],
    reduce: np.ndarray,
) -> KernelPlan:
    """The kernel's constants (callers cache the result per parameter set).

    Args:
        etas: (A,) Gaussian exponents η > 0, Å⁻².
        rs: (K,) Gaussian shifts, Å.
        rc: cutoff, Å (also the largest distance the recurrence must handle).
        recursion: for monomials 1 … M−1, (monomial with one power less, axis).
        reduce: (L+1, M) x[l] = Σ_n reduce[l, n] ρ̃_n² (see ``ead._monomial_tables``).
    """
    etas = np.asarray(etas, dtype=np.float64)
    rs = np.asarray(rs, dtype=np.float64)
    n_l, n_mono = reduce.shape
    step = _regular_step(rs)
    own = [block_shape(float(eta), rs, step, rc) for eta in etas]
    chosen, sources = shared_blocks(etas, own, len(rs), n_mono)
    shapes = [(length, -(-len(rs) // length)) if length else (0, 0) for length, _ in chosen]
    offsets = [offset for _, offset in chosen]
    scale_stride = max([len(rs)] + [length * blocks for length, blocks in shapes])
    anchor_stride = max([1] + [blocks for _, blocks in shapes])
    scale = np.zeros((len(etas), scale_stride))
    anchor_table = np.zeros((len(etas), anchor_stride))
    lift_table = np.zeros((len(etas), anchor_stride))
    for a, ((length, blocks), offset) in enumerate(zip(shapes, offsets, strict=True)):
        if length == 0:
            continue
        eta = float(etas[a])
        # S_bt = exp(−2ηΔτR_b − ηΔ²τ²), τ = t − h: the Gaussian at R_b + τΔ is A_b·P_t·S_bt
        tau = np.arange(length, dtype=np.float64) - offset
        anchors = np.array(
            [
                rs[b * length + offset]
                if b * length + offset < len(rs)
                else rs[b * length] + offset * step
                for b in range(blocks)
            ]
        )  # R_b = Rs[bB + h] (Rs[bB] for h = 0)
        exponents = -2.0 * eta * step * np.multiply.outer(anchors, tau) - eta * step**2 * tau * tau
        # The largest exponent of S_b (0 for h = 0) moves into A_b: S_bt ≤ 1, so that
        # A_b·P_t = G/S_bt ≥ G never underflows where the Gaussian G itself does not. A derived
        # η's A_b is its source's to the n-th power: its lift is n times the source's.
        source, power = sources[a]
        lift = exponents.max(axis=1) if source < 0 else power * lift_table[source, :blocks]
        scale[a, : len(rs)] = np.exp(exponents - lift[:, None]).reshape(-1)[: len(rs)]
        anchor_table[a, :blocks] = anchors
        lift_table[a, :blocks] = lift
    iplan = np.array(
        [n_l, n_mono, len(etas), len(rs), scale_stride, anchor_stride]
        + [
            v
            for shape, offset, source in zip(shapes, offsets, sources, strict=True)
            for v in (*shape, offset, *source)
        ]
        + [v for pair in recursion for v in pair],
        dtype=np.int64,
    )
    dplan = np.concatenate(
        [
            [rc, step or 0.0],
            etas,
            rs,
            np.asarray(reduce, dtype=np.float64).ravel(),
            scale.ravel(),
            anchor_table.ravel(),
            lift_table.ravel(),
        ]
    )
    iplan.flags.writeable = dplan.flags.writeable = False
    return KernelPlan(
        iplan,
        dplan,
        n_l * len(etas) * len(rs),
        tuple(shapes),
        tuple(offsets),
        tuple(sources),
    )


def supports(etas: np.ndarray, rs: np.ndarray, rc: float) -> bool:
    """Whether the kernel's exp covers every exponent −η(d − Rs)² of this parameter set."""
    reach = float(np.max(np.abs(rs))) + rc
    return float(np.max(etas)) * reach * reach < _MAX_EXPONENT


def featurize(
    z: np.ndarray,
    pos: np.ndarray,
    cell: np.ndarray,
    nl: NeighbourList,
    plan: KernelPlan,
    isa: str | None = None,
) -> np.ndarray:
    """EAD of every atom with the compiled kernel: (N, (L+1)·|η|·|Rs|) float64.

    Args:
        z: (N,) int64 atomic numbers.
        pos: (N, 3) float64 positions, Å.
        cell: (3, 3) float64 lattice vectors as rows, Å.
        nl: neighbour list with every distance below Rc (``check_radius`` applied), edges in
            any order (they are sorted by centre here when they are not already).
        plan: from :func:`kernel_plan`.
        isa: instruction-set variant (default :data:`ISA`).
    """
    if _EXTENSION is None:
        raise RuntimeError(f"the compiled EAD kernel is unavailable: {_REASON}")
    variant = checked_isa(isa, ISA, _SUPPORTED)
    z = np.ascontiguousarray(z, dtype=np.int64)
    out = np.empty((len(z), plan.n_features))
    edge_index = np.ascontiguousarray(nl.edge_index, dtype=np.int64)
    edge_shift = np.ascontiguousarray(nl.edge_shift, dtype=np.int64)
    edge_dist = np.ascontiguousarray(nl.edge_dist, dtype=np.float64)
    args = (
        z,
        np.ascontiguousarray(pos, dtype=np.float64),
        np.ascontiguousarray(cell, dtype=np.float64),
    )
    index = _ALL_ISAS.index(variant)
    if _EXTENSION.featurize(
        *args, edge_index, edge_shift, edge_dist, plan.iplan, plan.dplan, out, index
    ):
        # centres not ascending: sort the edges by centre (stable) and run again
        order = np.argsort(edge_index[1], kind="stable")
        status = _EXTENSION.featurize(
            *args,
            np.ascontiguousarray(edge_index[:, order]),
            np.ascontiguousarray(edge_shift[order]),
            np.ascontiguousarray(edge_dist[order]),
            plan.iplan,
            plan.dplan,
            out,
            index,
        )
        assert status == 0
    return out
