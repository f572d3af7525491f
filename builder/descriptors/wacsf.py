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

Evaluation (``method``, :data:`METHODS`; the tests check every path against DScribe and a
term-by-term loop, and the paths against each other):

* ``"kernel"`` (what ``"auto"`` runs wherever the compiled kernel is available): the optional C
  extension :mod:`builder.descriptors.wacsf_kernel` (``_wacsf_kernel.c``), one pass over the
  edges with one vectorised exp per (edge, η, Rs): the term-by-term sum, ~1e-15 relative, on
  any grid. Its f_c = cos²(πd / 2Rc) avoids the cancellation of ½(cos(πd/Rc) + 1) near the
  cutoff, so on features ~1e-19 of their atom's largest, reached only by edges just inside Rc,
  it differs from the NumPy paths by up to ~3e-8 relative (and is the exact one: 2e-12 in
  40-digit arithmetic, ``bench/results/wacsf_speed.md``); elsewhere by their rounding. Without
  the kernel (not built, stale, ``FP_WACSF_KERNEL=0``) ``"auto"`` makes the NumPy choice below,
  and ``"kernel"`` raises. It removes the ~32 NumPy calls per structure of the ladder, which
  dominate small cells (``bench/results/wacsf_speed.md``).
* ``"ladder"`` (what ``"auto"`` runs on the paper's grids without the kernel). The paper's Rs
  sit on a lattice c + mΔ (c the smallest Rs; Δ = 1 Å for sets 1-2, 0.5 Å for set 3; m ≤ 20),
  and with u = d − c

      exp(−η (d − Rs)²) = A · P^m · S,   A = e^{−η u²},  P = e^{2ηΔ u},  S = e^{−η (mΔ)²},

  so per edge and η two exps (A, P) and one product per rung m give every Rs: rung 0 is
  Z_j f_c A, rung m' = rung m · P^{m' − m}. The rungs are summed over each centre's edges
  (``np.add.reduceat``; the whole rung table at once, or a rung at a time where the table
  would leave the cache) and S (with f_c's ½) is applied to the (N, η, Rs) sums. Where numpy's
  float64 ``exp`` is not vectorised (it is for AVX-512 only; on AVX2 it is libm's, ~25
  products), even A and P come from products: every η of the paper is an integer multiple n_a
  of η₀ = 0.01 Å⁻² (n ≤ 500), and (P_a, A_a) = (P₀, A₀)^{n_a} along one addition chain (8, 14
  and 18 products for sets 2, 1 and 3), so an edge costs 2 exps and one cos in all. The choice
  follows the CPU only (numpy's CPU features), so it is the same for every run on one machine.
  Safety: the plan admits the ladder only where η u² ≤ 600 (A does not underflow), η (mΔ)² ≤ 600
  (no rung overflows: rung m = Z f_c e^{η (mΔ)²} G ≤ Z e^{600}) and 2ηΔu ≤ 600 (P); every
  intermediate of a chain lies between its end points (the exponent is linear in m and n), so
  these bounds cover all of them. Rounding: a power X^n of a rounded X carries ~n ulps, so the
  relative error is ≲ (n_a · m + 100) ε; the plan keeps n_a · m ≤ ``_MAX_POWER`` (≲ 1.2e-12).
  Measured against the fused path on 1,500 structures: ≤ 1.5e-12 relative (set 3; sets 1, 2:
  7.7e-13, 4.4e-14), ``bench/results/wacsf_speed.md``.
* ``"fused"`` (the fallback where the ladder is not admitted). The weight is folded into the
  exponent, Z_j f_c exp(−η(d − Rs)²) = exp(−η d² + 2η Rs d − η Rs² + log(Z_j f_c)), so one matrix
  product [d², d, 1, log(Z f_c)] (E × 4) · coefficients (4 × |η||Rs|) gives every exponent, one
  in-place ``exp`` the terms and one ``np.add.reduceat`` the sums. f_c > 0 for every d < Rc, so
  the logarithm is finite; the folded exponent's rounding is ~1e-13 relative.
* ``"factorised"`` / ``"direct"``: the shared engine's paths (:mod:`builder.descriptors._common`).
  On a regular grid of ≥ 16 shifts ``"auto"`` without the kernel runs ``"factorised"``, as before
  (``bench/results/wacsf_paths.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from fingerprint_pretrain.builder.descriptors import _common, wacsf_kernel
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

__all__ = ["DEFAULT_RC", "METHODS", "feature_names", "featurize", "required_radius"]

#: Default cutoff radius, Å (see the module docstring).
DEFAULT_RC = 8.0
#: Evaluation paths of :func:`featurize` (module docstring).
METHODS = ("auto", "kernel", "ladder", "fused", "direct", "factorised")

# Largest exponent magnitude the ladder may meet (exp overflows above ~709.8; the margin covers
# the weight Z f_c ≤ 118 and sums over up to ~1e40 edges).
_EXP_LIMIT = 600.0
# Lattice and common-η₀ relations must hold to this relative error of the exponents.
_RELATION_TOLERANCE = 1e-15
# Δ is tried as the smallest Rs gap divided by 1 … this (e.g. Rs = 0, 1, 1.5 → Δ = 0.5 Å).
_MAX_DIVISOR = 4
# Largest lattice index m (one rung per distinct m) and largest multiple η / η₀.
_MAX_RUNG = 64
_MAX_MULTIPLE = 1000
# Largest power n · m of a rounded exp (relative error ≲ n · m ulps; module docstring).
_MAX_POWER = 10_000
# Rung tables up to this many doubles (256 KB) are built whole, then reduced in one call;
# larger ones a rung at a time (each reduced while in cache).
_RUNGS_IN_CACHE = 1 << 15
# 0, 1, 2, …: centre indices without a numpy call per structure (read-only).
_RANGE = np.arange(1024)
_RANGE.flags.writeable = False


def _numpy_exp_vectorised() -> bool:
    """Whether numpy dispatches its SIMD float64 exp here (AVX512F; numpy's CPU features)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return False
    return bool(__cpu_features__.get("AVX512F", False))


# Whether numpy's float64 exp is vectorised on this CPU (it is for AVX-512 only; on AVX2 it is
# libm's, ~25 products). Where it is, an η's own two exps cost less than its chain of products
# plus their numpy calls, so the ladder exponentiates every η (module docstring).
_CHEAP_EXP = _numpy_exp_vectorised()


@dataclass(frozen=True)
class _Ladder:
    """Constants of the ladder path (module docstring) for one parameter set.

    Attributes:
        origin: c, the smallest Rs, Å; u = d − c.
        exponent_scale: (2, S, 1) float64 for the S exponentiated η (all η, or η₀ alone): rows
            2ηΔ (times u: exponent of P) and −η (times u²: exponent of A), Å⁻² · Å.
        program: products deriving (P_a, A_a) = (P₀, A₀)^{n_a} when exponent_scale holds η₀
            alone, else empty. Registers 0 … n_η − 1 are the pairs of the η, in order; higher
            ones are temporaries. Each step is (destination, left, right): destination =
            left · right, or a copy of left when right is −1.
        base_register: where the exps of η₀ go (a pair, or a temporary when η₀ is no η).
        n_registers: pairs plus temporaries.
        steps: differences m_{r+1} − m_r of the distinct sorted lattice indices (one rung each).
        columns: (n_rs,) rung of each Rs in the given order, or None when rung k is Rs k.
        scale: (n_η, n_rs) float64 ½ e^{−η (Rs − c)²} (the ½ of f_c, see :func:`_ladder_weight`).
    """

    origin: float
    exponent_scale: np.ndarray
    program: tuple[tuple[int, int, int], ...]
    base_register: int
    n_registers: int
    steps: tuple[int, ...]
    columns: np.ndarray | None
    scale: np.ndarray

    @property
    def n_rungs(self) -> int:
        return len(self.steps) + 1


@dataclass(frozen=True)
class _Plan:
    """Validated parameters and the constants of every evaluation path.

    Attributes:
        etas, rs: (n_η,), (n_rs,) read-only float64, Å⁻² and Å.
        rc: cutoff, Å.
        coefficients: (4, n_η · n_rs) exponent coefficients of the fused path.
        ladder: constants of the ladder path, or None where it is not admitted.
        auto_factorised: whether ``"auto"`` runs the shared engine's factorised path (without
            the kernel).
        eta_columns, rs_columns: (n_η · n_rs,) read-only float64 η (Å⁻²) and Rs (Å) of each
            output column, for the compiled kernel.
    """

    etas: np.ndarray
    rs: np.ndarray
    rc: float
    coefficients: np.ndarray
    ladder: _Ladder | None
    auto_factorised: bool
    eta_columns: np.ndarray
    rs_columns: np.ndarray


def _values_key(values) -> tuple:
    """Hashable tuple of floats of a flat sequence (cheap for lists, the registry's type)."""
    try:
        return tuple(map(float, values))
    except TypeError:  # an array, nested or not
        return tuple(np.ravel(values).tolist())


def _validated(etas: Sequence[float], rs: Sequence[float], rc: float) -> _Plan:
    """The :class:`_Plan` of (etas, rs, rc); raises ValueError on bad values. Cached:
    featurize is called once per structure."""
    return _cached_plan(_values_key(etas), _values_key(rs), rc)


@lru_cache(maxsize=32)
def _cached_plan(etas: tuple, rs: tuple, rc) -> _Plan:
    etas_arr = np.array(etas, dtype=np.float64)
    rs_arr = np.array(rs, dtype=np.float64)
    if len(etas_arr) == 0 or len(rs_arr) == 0:
        raise ValueError("wACSF needs at least one eta and one Rs")
    if np.any(etas_arr <= 0):
        raise ValueError(f"wACSF etas must be > 0, got {list(etas)}")
    if not rc > 0:
        raise ValueError(f"wACSF rc must be > 0, got {rc}")
    rc = float(rc)
    # exponent of column (η, Rs) = [d², d, 1, log(Z f_c)] · (−η, 2η Rs, −η Rs², 1)
    eta_col, rs_col = np.repeat(etas_arr, len(rs_arr)), np.tile(rs_arr, len(etas_arr))
    coefficients = np.stack(
        [-eta_col, 2.0 * eta_col * rs_col, -eta_col * rs_col**2, np.ones_like(eta_col)]
    )
    ladder = _ladder_plan(etas_arr, rs_arr, rc)
    arrays = [etas_arr, rs_arr, coefficients, eta_col, rs_col]
    if ladder is not None:
        arrays += [ladder.exponent_scale, ladder.scale]
    for array in arrays:
        array.flags.writeable = False
    factorised = gaussian_plan(etas_arr, rs_arr, rc, 1, squared=False).factorised
    return _Plan(etas_arr, rs_arr, rc, coefficients, ladder, bool(factorised), eta_col, rs_col)


def _integer_multiples(values: np.ndarray, limit: int) -> tuple[float, np.ndarray] | None:
    """(unit, n) with values = n · unit for integers 1 ≤ n ≤ limit (to _RELATION_TOLERANCE
    relative), unit = min(values) / k for the smallest k ≤ _MAX_DIVISOR that works, or None.
    ``values`` > 0."""
    for divisor in range(1, _MAX_DIVISOR + 1):
        unit = float(values.min()) / divisor
        n = np.rint(values / unit)
        if n.max() > limit:
            return None
        if np.all(np.abs(values - n * unit) <= _RELATION_TOLERANCE * values):
            return unit, n.astype(np.int64)
    return None


def _lattice(offsets: np.ndarray) -> tuple[float, np.ndarray] | None:
    """(Δ, m) with offsets = m · Δ for integers 0 ≤ m ≤ _MAX_RUNG, or None. ``offsets`` ≥ 0."""
    positive = offsets[offsets > 0]
    if len(positive) == 0:
        return 0.0, np.zeros(len(offsets), dtype=np.int64)  # one Rs: no P needed (P = 1)
    found = _integer_multiples(np.unique(positive), _MAX_RUNG)
    if found is None:
        return None
    step = found[0]
    m = np.rint(offsets / step).astype(np.int64)
    if np.any(np.abs(offsets - m * step) > _RELATION_TOLERANCE * offsets):
        return None
    return step, m


def _ladder_plan(etas: np.ndarray, rs: np.ndarray, rc: float) -> _Ladder | None:
    """Constants of the ladder path, or None where the grid is no lattice or an exponent could
    leave [−_EXP_LIMIT, _EXP_LIMIT] or a power exceed _MAX_POWER (module docstring)."""
    origin = float(rs.min())
    reach = max(abs(origin), abs(rc - origin))  # largest |u|, u = d − c, 0 < d < rc
    offsets = rs - origin
    lattice = _lattice(offsets)
    if lattice is None:
        return None
    step, m = lattice
    rungs = np.unique(m)
    steps = tuple(int(k) for k in np.diff(rungs))
    eta_max = float(etas.max())
    bounds = (
        eta_max * reach**2,  # A = e^{−η u²} must not underflow
        eta_max * float(offsets.max()) ** 2,  # rung m ≤ Z e^{η (mΔ)²}; S = e^{−η (mΔ)²}
        2.0 * eta_max * step * max(steps, default=1) * reach,  # P^{step}
    )
    if max(bounds) > _EXP_LIMIT or int(m.max()) > _MAX_POWER:
        return None
    program, base_register, n_registers, sources = (), 0, len(etas), etas
    multiples = _integer_multiples(etas, _MAX_MULTIPLE)
    if multiples is not None and len(etas) > 1 and not _CHEAP_EXP:
        unit, n = multiples
        if int(n.max()) * max(int(m.max()), 1) <= _MAX_POWER:
            program, base_register, n_registers = _power_program([int(k) for k in n])
            sources = np.array([unit])
    columns = np.searchsorted(rungs, m)
    identity = len(rungs) == len(rs) and bool(np.all(columns == np.arange(len(rs))))
    return _Ladder(
        origin=origin,
        exponent_scale=np.stack([2.0 * sources * step, -sources])[:, :, None],
        program=program,
        base_register=base_register,
        n_registers=n_registers,
        steps=steps,
        columns=None if identity else columns,
        scale=0.5 * np.exp(-np.multiply.outer(etas, offsets**2)),
    )


def _power_program(multiples: list[int]) -> tuple[tuple[tuple[int, int, int], ...], int, int]:
    """(program, base register, number of registers) computing X^{n_a} into register a for
    every a from X = X^1 (see :class:`_Ladder`): an addition chain, each new exponent the sum of
    two known ones (a known one doubled, or the largest known one plus a smaller one made
    first)."""
    home: dict[int, int] = {}
    for a, n in enumerate(multiples):
        home.setdefault(n, a)
    next_temp = [len(multiples)]

    def place(n: int) -> int:
        if n in home:
            return home[n]
        next_temp[0] += 1
        return next_temp[0] - 1

    where = {1: place(1)}
    program: list[tuple[int, int, int]] = []

    def emit(n: int, left: int, right: int) -> None:
        where[n] = place(n)
        program.append((where[n], where[left], where[right]))

    def ensure(n: int) -> None:
        if n in where:
            return
        for k in sorted(where, reverse=True):
            if k < n and n - k in where:
                emit(n, k, n - k)
                return
        if n % 2 == 0:
            ensure(n // 2)
            emit(n, n // 2, n // 2)
            return
        k = max(k for k in where if k < n)
        ensure(n - k)
        emit(n, k, n - k)

    for n in sorted(home):
        ensure(n)
    for a, n in enumerate(multiples):
        if home[n] != a:
            program.append((a, home[n], -1))
    return _reuse_temporaries(program, where[1], len(multiples))


def _reuse_temporaries(
    program: list[tuple[int, int, int]], base: int, n_slots: int
) -> tuple[tuple[tuple[int, int, int], ...], int, int]:
    """(program, base, number of registers) with the temporaries (registers ≥ ``n_slots``)
    renumbered so that one whose last use has passed is reused (less memory to stream; a
    product may write over one of its own operands, which numpy does elementwise safely)."""
    last_use: dict[int, int] = {}
    for step, (_, left, right) in enumerate(program):
        for register in (left, right):
            if register >= n_slots:
                last_use[register] = step
    physical: dict[int, int] = {}
    free: list[int] = []
    count = n_slots

    def allocate(register: int) -> int:
        nonlocal count
        if register < n_slots:
            return register
        if register not in physical:
            if free:
                physical[register] = free.pop()
            else:
                physical[register] = count
                count += 1
        return physical[register]

    renamed = []
    base_register = allocate(base)
    for step, (destination, left, right) in enumerate(program):
        left_register, right_register = allocate(left), allocate(right) if right >= 0 else -1
        for register in {left, right}:
            if register >= n_slots and last_use[register] == step:
                free.append(physical[register])
        renamed.append((allocate(destination), left_register, right_register))
    return tuple(renamed), base_register, count


def feature_names(etas: Sequence[float], rs: Sequence[float], rc: float = DEFAULT_RC) -> list[str]:
    """Names in output order: ``eta=<η>,Rs=<Rs>``, η slowest, Rs fastest."""
    plan = _validated(etas, rs, rc)
    return [f"eta={format_value(e)},Rs={format_value(r)}" for e in plan.etas for r in plan.rs]


def required_radius(etas: Sequence[float], rs: Sequence[float], rc: float = DEFAULT_RC) -> float:
    """Neighbour-list radius needed: the cutoff ``rc``, Å."""
    return _validated(etas, rs, rc).rc


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
        nl: neighbour list complete within ≥ ``rc`` (a wider one is cut to ``rc``), edges
            grouped by centre (as :func:`~builder.neighbors.neighbour_list` gives them).
        etas: Gaussian exponents η, Å⁻².
        rs: Gaussian centres Rs, Å.
        rc: cutoff radius, Å.
        method: one of :data:`METHODS` (module docstring): ``"auto"`` (the compiled kernel
            where it is available; else factorised on long regular grids, else the ladder where
            admitted, else fused), ``"kernel"`` (raises RuntimeError when it is unavailable),
            ``"ladder"`` (where admitted, else fused), ``"fused"``, ``"direct"`` or
            ``"factorised"``. All agree to ≲ 1.5e-12 relative (the ladder's powers; the kernel
            ~1e-15, the others ~1e-13) except on features ~1e-19 of the atom's largest, where
            the NumPy paths' cutoff function loses up to ~3e-8 (module docstring).

    Returns:
        (N, len(etas)·len(rs)) float64, C-contiguous, columns as in :func:`feature_names`.
    """
    del pos, cell, pbc  # distances come from the neighbour list
    if method not in METHODS:
        raise ValueError(f"unknown wACSF method {method!r} (one of {', '.join(METHODS)})")
    plan = _validated(etas, rs, rc)
    if not (type(z) is np.ndarray and z.dtype == np.int64 and z.ndim == 1):
        z = np.asarray(z, dtype=np.int64).reshape(-1)
    n_atoms = len(z)
    if method == "kernel" or (method == "auto" and wacsf_kernel.available()):
        if nl.cutoff < plan.rc * (1.0 - 1e-12):
            check_radius(nl, plan.rc, "wACSF")  # raises; the kernel skips edges with d ≥ rc
        return wacsf_kernel.featurize(z, nl, plan.eta_columns, plan.rs_columns, plan.rc)
    nl = check_radius(nl, plan.rc, "wACSF")
    if nl.num_edges == 0:
        return np.zeros((n_atoms, len(plan.etas) * len(plan.rs)))
    if method == "auto":
        method = "factorised" if plan.auto_factorised else "ladder"
    if method == "ladder" and plan.ladder is not None:
        return _ladder(z, nl, plan.ladder, plan.rc)
    neighbour, centre = nl.edge_index
    counts, starts = edge_starts(centre, n_atoms)
    weight = cosine_cutoff(nl.edge_dist, plan.rc, inside=True)
    weight *= np.take(z, neighbour)
    if method in ("ladder", "fused"):
        return _fused(nl.edge_dist, weight, counts, starts, plan.coefficients)
    gaussians = gaussian_plan(plan.etas, plan.rs, plan.rc, 1, squared=False, method=method)
    # Per-edge [d, Z_j f_c(d)] and a trailing zero column for the padding slots.
    n_edges = nl.num_edges
    edge_values = np.zeros((2, n_edges + 1))
    edge_values[0, :n_edges] = nl.edge_dist
    edge_values[1, :n_edges] = weight
    out = blocked_moments(gaussians, edge_values, counts, starts, 1, lambda padded: padded[1:])
    return out.reshape(n_atoms, len(plan.etas) * len(plan.rs))


def _ladder(z: np.ndarray, nl: NeighbourList, ladder: _Ladder, rc: float) -> np.ndarray:
    """(N, n_η · n_rs) wACSF by the ladder (module docstring), C-contiguous.

    Every call counts here (a numpy call costs ~1-2 µs, a structure ~100 µs): methods and
    indexing instead of numpy's Python-level wrappers, one block without empty centres first.
    """
    n_atoms = len(z)
    n_etas, n_rs = ladder.scale.shape
    neighbour, centre = nl.edge_index[0], nl.edge_index[1]
    dist = nl.edge_dist
    n_edges = len(dist)
    # 2 Z_j f_c(d) = Z_j (cos(π d / rc) + 1): the ½ is in ladder.scale (halving is exact, so
    # the product equals the other paths' Z_j f_c bit for bit).
    weight = dist * (np.pi / rc)
    np.cos(weight, out=weight)
    weight += 1.0
    weight *= z[neighbour]
    # Edges of centre i: bounds[i] … bounds[i + 1] − 1 (the list is grouped by centre).
    indices = _RANGE[: n_atoms + 1] if n_atoms < len(_RANGE) else np.arange(n_atoms + 1)
    bounds = centre.searchsorted(indices)
    starts = bounds[:-1]
    counts = bounds[1:] - starts
    work_per_edge = (ladder.n_rungs + 3) * n_etas
    if (
        n_edges * work_per_edge <= _common._WORK_ELEMENTS and np.count_nonzero(counts) == n_atoms
    ):  # the common case: one block, every centre has neighbours
        out = np.empty((n_atoms, n_etas, n_rs))
        _ladder_block(dist, weight, starts, ladder, out)
        return out.reshape(n_atoms, n_etas * n_rs)
    out = np.zeros((n_atoms, n_etas, n_rs))
    for first, last in centre_blocks(counts, work_per_edge):
        rows = first + np.flatnonzero(counts[first:last])  # reduceat needs non-empty segments
        if len(rows) == 0:
            continue
        lo, hi = int(starts[rows[0]]), int(starts[rows[-1]] + counts[rows[-1]])
        block = np.empty((len(rows), n_etas, n_rs))
        _ladder_block(dist[lo:hi], weight[lo:hi], starts[rows] - lo, ladder, block)
        out[rows] = block
    return out.reshape(n_atoms, n_etas * n_rs)


def _ladder_block(
    dist: np.ndarray,
    weight: np.ndarray,
    segment_starts: np.ndarray,
    ladder: _Ladder,
    out: np.ndarray,
) -> None:
    """Ladder sums of C centres into ``out``.

    Args:
        dist: (E,) distances of the block's edges, grouped by centre, Å.
        weight: (E,) :func:`_ladder_weight` of those edges.
        segment_starts: (C,) first edge of each centre (every centre has ≥ 1 edge).
        ladder: the plan's constants.
        out: (C, n_η, n_rs) float64, written.
    """
    n_edges = len(dist)
    n_etas = ladder.scale.shape[0]
    n_segments = len(segment_starts)
    u = dist - ladder.origin if ladder.origin else dist
    # registers[a] = (P_a, A_a) of η a (contiguous pairs for the program's products), then
    # the program's temporaries.
    registers = np.empty((ladder.n_registers, 2, n_edges))
    if ladder.program:
        pairs = list(registers)  # views, made once
        base = pairs[ladder.base_register]
        np.multiply(u, ladder.exponent_scale[0, 0, 0], out=base[0])
        np.multiply(u * u, ladder.exponent_scale[1, 0, 0], out=base[1])
        np.exp(base, out=base)
        for destination, left, right in ladder.program:
            if right < 0:
                pairs[destination][...] = pairs[left]
            else:
                np.multiply(pairs[left], pairs[right], out=pairs[destination])
    else:
        np.multiply(ladder.exponent_scale[0], u, out=registers[:, 0])
        np.multiply(ladder.exponent_scale[1], u * u, out=registers[:, 1])
        np.exp(registers, out=registers)
    factor = registers[:n_etas, 0]  # P, (n_η, E)
    powers = {1: factor}
    if ladder.n_rungs * n_etas * n_edges <= _RUNGS_IN_CACHE:
        # All rungs, then one reduceat.
        rungs = np.empty((ladder.n_rungs, n_etas, n_edges))
        np.multiply(registers[:n_etas, 1], weight, out=rungs[0])
        for r, step in enumerate(ladder.steps):
            if step not in powers:
                powers[step] = _power(factor, step)
            np.multiply(rungs[r], powers[step], out=rungs[r + 1])
        sums = np.add.reduceat(rungs, segment_starts, axis=2)  # (rungs, n_η, C)
    else:
        # Large blocks: one rung at a time, reduced at once, stays in cache.
        rung = np.multiply(registers[:n_etas, 1], weight)
        sums = np.empty((ladder.n_rungs, n_etas, n_segments))
        np.add.reduceat(rung, segment_starts, axis=1, out=sums[0])
        for r, step in enumerate(ladder.steps):
            if step not in powers:
                powers[step] = _power(factor, step)
            np.multiply(rung, powers[step], out=rung)
            np.add.reduceat(rung, segment_starts, axis=1, out=sums[r + 1])
    if ladder.columns is not None:
        sums = sums[ladder.columns]
    np.multiply(sums.transpose(2, 1, 0), ladder.scale, out=out)


def _power(base: np.ndarray, exponent: int) -> np.ndarray:
    """base ** exponent by binary powering (a few products; relative error ~exponent ulps)."""
    result, square, k = None, base, exponent
    while k:
        if k & 1:
            result = square if result is None else result * square
        k >>= 1
        if k:
            square = square * square
    return result


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
