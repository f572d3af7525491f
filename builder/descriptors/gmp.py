"""GMP (Gaussian multipole) per-atom descriptors: label sets ``gmpset1`` … ``gmpset3``.

Definition (Lei & Medford 2022; GMP-featurizer's defaults, as the paper's authors ran them).
The model electron density is a sum of per-element primitive Gaussians on every atom,
``ρ(r) = Σ_j Σ_g B_{e_j,g} exp(−β_{e_j,g} |r − R_j − T|²)`` with (B, β) read from
``builder/data/QE-kjpaw.gpsp`` (GMP-featurizer's file, Apache-2.0, see ``builder/data/README``).
The probe of order n ≥ 0, width σ and component k = (kx, ky, kz), |k| = n, centred on atom i is
``φ_k(r) = A exp(−α r²) M_k(r)``, A = (σ √(2π))⁻³, α = 1 / (2σ²), with M_k the Maxwell-Cartesian
harmonic ``M_k = (−1)ⁿ r^{2n+1} ∂^k (1/r)`` (M_0 = 1; M_x = x; M_xx = 3x² − r², M_xy = 3xy; …).
Because M_k is a homogeneous harmonic polynomial, the overlap ``μ_k = ∫ φ_k ρ`` is closed-form:
with d = R_j + T − r_i, γ = α + β, λ = β / γ,

    μ_k = Σ_{j,T,g} A B (π/γ)^{3/2} exp(−(αβ/γ) |d|²) M_k(λ d)
        = Σ_{j,T} M_k(d) · Σ_g A B (π/γ)^{3/2} λⁿ exp(−(αβ/γ) |d|²).

The second line is how it is computed: one radial weight per (edge, σ, n), summed over the ≤ 8
Gaussians of the neighbour's element, then contracted with the degree-n monomials of d as a
batched matrix product (per centre: monomials × edges times edges × σ). The rotation invariant is
``G_{n,σ} = sqrt(Σ_{|k|=n} n!/(kx! ky! kz!) μ_k²)`` (GMP-featurizer's ``square=False``); order −1
is one feature, ``|ρ(r_i)|``, the density at the centre (σ unused).

Feature order (``feature_names``): ``order=-1`` first (when −1 is in ``orders``), then one feature
per (n ≥ 0, σ), order-major and σ-minor: ``order=0,sigma=0.5``, ``order=0,sigma=1`` … Dimensions of
the sets: 13 / 10 / 31.

Decisions and why:

* **Periodic by default** (``periodic=True``): ρ includes every periodic image of every atom, so
  the features describe the crystal and do not depend on the choice of unit cell (primitive,
  conventional and supercells give identical features; tested). The paper's authors built
  ``ase.Atoms(...)`` without ``pbc`` and called ``wrap()``; ASE's ``wrap()`` only moves positions
  along periodic directions, so with ``pbc=False`` it leaves them exactly as given, and
  GMP-featurizer then saw a finite cluster. ``periodic=False`` reproduces those as-run labels: ρ
  is the cluster of the N atoms *at the positions as given* (no wrapping is applied, mirroring the
  no-op ``wrap()``; feed the positions the authors' reader produced to match them exactly). It is
  implemented by keeping only the zero-shift edges of the (periodic) neighbour list.
* **The centre atom is part of ρ** (self-term). Its d = 0 term is not in any neighbour list, so it
  is added explicitly: Σ_g A B (π/γ)^{3/2} to the n = 0 overlaps (M_k(0) = 0 for n ≥ 1) and Σ_g B
  to ρ(r_i). Its own periodic images are ordinary neighbours.
* **Cutoff from the overlap threshold**, as GMP-featurizer does, but derived from a bound on the
  term actually summed: a Gaussian g of a neighbour of element e contributes to (σ, n) at most
  ``|A B| (π/γ)^{3/2} · n! (λ d)ⁿ · exp(−(αβ/γ) d²)`` per component (|M_k(u)| ≤ n! |u|ⁿ, equality
  on an axis), and it is dropped beyond the largest d where that bound equals
  ``overlap_threshold`` (default 1e-16), maximised over the requested orders; order −1 uses
  ``|B| exp(−β d²)``. This gives one radius per (σ, element, Gaussian). GMP-featurizer truncates
  per (order, σ, element, Gaussian) from a slightly different formula; both leave out terms of
  ~1e-16 and agree to ~1e-13 relative (tested against it on real structures).
  ``required_radius(**params)`` is the maximum over all elements of the density file (23.3 /
  14.5 / 18.5 Å for sets 1 / 2 / 3), so a registry can build one neighbour list per set without
  looking at the structure; ``required_radius(..., elements=z)`` gives the (often much smaller)
  radius for the elements present, and ``featurize`` itself only uses edges within that radius
  (``nl.within``). Inside it every (edge, Gaussian term) pair within the term's own radius is
  evaluated exactly once (each element's terms sorted by radius; an edge's terms are then one
  contiguous run, found by one ``searchsorted`` of all edges), so narrow Gaussians cost little.
* **Neighbour lists**: ``featurize`` needs a list complete to ``required_radius(elements=z,
  ...)``; any edge order is accepted (re-sorted by centre and distance if needed).

Accuracy (tests): NaCl reference values of descriptors.md to 2e-13 (periodic) and 2e-10
(cluster; both limited by the digits quoted), GMP-featurizer to ≤ 1e-13 of each atom's largest
feature, a brute-force real-space grid integration to ~6e-14.

Evaluation paths (``featurize(..., method=...)``): the compiled kernel
(:mod:`builder.descriptors.gmp_kernel`, the optional C extension ``_gmp_kernel.c``) when it is
built, else the NumPy path below, which stays the reference and the fallback; both evaluate the
same (edge, term) pairs with the same truncation and agree to ~1e-14 of each atom's largest
feature (tests: ``test_gmp.py`` runs the default, ``test_gmp_kernel.py`` the kernel per
instruction set, the NumPy path, and the independent references on both).

Costs of the NumPy path: per block of centres (≤ ``_EDGES_PER_BLOCK`` edges, so the work arrays
stay in cache) one exp over all (edge, term) pairs, one ``bincount`` summing them times each
order's weight into a padded (centre, column) table, and per order one batched matrix product
of the monomials of d with that table; there is no Python loop over atoms, edges, elements or
Gaussians. Set by set the pair bookkeeping (gathers and the ``bincount``, ~4 exps' worth per
pair on AVX2) and, for small structures, NumPy's per-call cost dominate; the kernel removes
both (one pass over the edges, 8 at a time). Rates of both against GMP-featurizer's, one core:
``bench/results/gmp.md`` (``bench/bench_gmp.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import NamedTuple

import numpy as np
from fingerprint_pretrain.builder.descriptors import gmp_kernel
from fingerprint_pretrain.builder.neighbors import NeighbourList

__all__ = [
    "MAX_ORDER",
    "METHODS",
    "Density",
    "feature_names",
    "featurize",
    "load_density",
    "maxwell_cartesian",
    "required_radius",
    "unsupported_elements",
]

MAX_ORDER = 4
# Evaluation paths of featurize: "auto" = the compiled kernel when available, else "numpy".
METHODS = ("auto", "kernel", "numpy")
DEFAULT_PSP = "QE-kjpaw"
DEFAULT_OVERLAP_THRESHOLD = 1e-16
# Edges per block of centres: bounds the work arrays (~ edges × terms per edge × layers) so that
# they stay in a core's L2 cache; measured best 2,500-4,000 on gmpset1-3 (65,536: 1.6-1.8x slower).
_EDGES_PER_BLOCK = 4096


# --------------------------------------------------------------------------------------------
# Model densities
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Density:
    """Per-element Gaussian model densities, zero-padded to the largest Gaussian count.

    Attributes:
        name: the density file's name without extension (e.g. ``"QE-kjpaw"``).
        coefficients: (Zmax + 1, G) float64 B, Å⁻³-scaled amplitudes; 0 where padded.
        exponents: (Zmax + 1, G) float64 β, Å⁻²; 1.0 where padded.
        counts: (Zmax + 1,) int64 Gaussians per element; 0 = element not available.
    """

    name: str
    coefficients: np.ndarray
    exponents: np.ndarray
    counts: np.ndarray

    @property
    def elements(self) -> np.ndarray:
        """Atomic numbers this density file covers (Z ≥ 1 with at least one Gaussian)."""
        return np.flatnonzero(self.counts > 0)


@cache
def load_density(psp: str = DEFAULT_PSP) -> Density:
    """Read ``builder/data/<psp>.gpsp`` (format in ``builder/data/README.md``)."""
    text = (
        resources.files("fingerprint_pretrain.builder").joinpath("data", f"{psp}.gpsp").read_text()
    )
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#") and not ln.startswith("!")]
    elements: dict[int, np.ndarray] = {}
    k = 0
    while k < len(lines):
        if lines[k].startswith("****"):
            _symbol, atomic_number, count = lines[k + 1].split()
            rows = [[float(v) for v in lines[k + 2 + m].split()] for m in range(int(count))]
            elements[int(atomic_number)] = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
            k += 2 + int(count)
        else:
            raise ValueError(f"{psp}.gpsp: unexpected line {lines[k]!r}")
    z_max = max(elements)
    width = max(len(v) for v in elements.values())
    coefficients = np.zeros((z_max + 1, width))
    exponents = np.ones((z_max + 1, width))
    counts = np.zeros(z_max + 1, dtype=np.int64)
    for atomic_number, gaussians in elements.items():
        # Z = 0 is the file's dummy element (B = 0): leave it unavailable.
        if atomic_number < 1 or not np.any(gaussians[:, 0]):
            continue
        coefficients[atomic_number, : len(gaussians)] = gaussians[:, 0]
        exponents[atomic_number, : len(gaussians)] = gaussians[:, 1]
        counts[atomic_number] = len(gaussians)
    for array in (coefficients, exponents, counts):
        array.setflags(write=False)
    return Density(psp, coefficients, exponents, counts)


# --------------------------------------------------------------------------------------------
# Maxwell-Cartesian harmonics
# --------------------------------------------------------------------------------------------


def _components(n: int) -> list[tuple[int, int, int]]:
    """Multi-indices k with |k| = n, in the fixed order (kx descending, then ky descending)."""
    return [(a, b, n - a - b) for a in range(n, -1, -1) for b in range(n - a, -1, -1)]


@cache
def _harmonic_polynomial(k: tuple[int, int, int]) -> dict[tuple[int, int, int], int]:
    """M_k as {monomial exponents: integer coefficient}.

    Recursion from ∂_a (P / r^{2n+1}) with M_k = (−1)ⁿ r^{2n+1} ∂^k (1/r):
    M_{k+e_a} = (2n+1) x_a M_k − r² ∂_a M_k.
    """
    n = sum(k)
    if n == 0:
        return {(0, 0, 0): 1}
    axis = next(a for a in range(3) if k[a] > 0)
    lower = list(k)
    lower[axis] -= 1
    previous = _harmonic_polynomial(tuple(lower))
    result: dict[tuple[int, int, int], int] = {}

    def add(monomial: tuple[int, int, int], value: int) -> None:
        result[monomial] = result.get(monomial, 0) + value

    for monomial, coefficient in previous.items():
        raised = list(monomial)
        raised[axis] += 1
        add(tuple(raised), (2 * n - 1) * coefficient)
        if monomial[axis] > 0:
            derived = list(monomial)
            derived[axis] -= 1
            factor = coefficient * monomial[axis]
            for b in range(3):  # − r² ∂_a, r² = x² + y² + z²
                term = list(derived)
                term[b] += 2
                add(tuple(term), -factor)
    return {m: c for m, c in result.items() if c != 0}


@cache
def maxwell_cartesian(n: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
    """Order-n harmonics in the monomial basis.

    Returns:
        coefficients: (K, K) int64, M_k(d) = Σ_m coefficients[k, m] · monomial_m(d), where both
            k and m run over ``_components(n)`` (M_k is homogeneous of degree n).
        weights: (K,) float64 n!/(kx! ky! kz!), the invariant's weights.
        components: the K multi-indices, in order.
    """
    if not 0 <= n <= MAX_ORDER:
        raise ValueError(f"order must be in 0..{MAX_ORDER}, got {n}")
    components = _components(n)
    index = {m: i for i, m in enumerate(components)}
    coefficients = np.zeros((len(components), len(components)), dtype=np.int64)
    for row, k in enumerate(components):
        for monomial, value in _harmonic_polynomial(k).items():
            coefficients[row, index[monomial]] = value
    weights = np.array(
        [math.factorial(n) / math.prod(math.factorial(c) for c in k) for k in components]
    )
    return coefficients, weights, components


# --------------------------------------------------------------------------------------------
# Parameters, per-Gaussian constants and truncation radii
# --------------------------------------------------------------------------------------------


def _truncation_radius(
    amplitude: np.ndarray, decay: np.ndarray, scale: np.ndarray, n: int, threshold: float
) -> np.ndarray:
    """Largest d with amplitude · n! (scale·d)ⁿ exp(−decay d²) ≥ threshold (0 if never), Å.

    f(d) = log(amplitude n!/threshold) + n log(scale d) − decay d² is concave, so the fixed-point
    iteration d ← sqrt((log(amplitude n!/threshold) + n log(scale d)) / decay), started at the
    maximum of f, climbs monotonically to its larger root.
    """
    with np.errstate(divide="ignore"):
        log_ratio = np.log(np.abs(amplitude) * math.factorial(n) / threshold)
    d = np.sqrt(n / (2.0 * decay))
    for _ in range(200):
        log_poly = n * np.log(np.maximum(scale * d, 1e-300)) if n else 0.0
        d_next = np.sqrt(np.maximum(log_ratio + log_poly, 0.0) / decay)
        if np.allclose(d_next, d, rtol=1e-12, atol=0.0):
            d = d_next
            break
        d = d_next
    log_poly = n * np.log(np.maximum(scale * d, 1e-300)) if n else 0.0
    reachable = (log_ratio + log_poly - decay * d * d > -1e-9) & (amplitude != 0)
    return np.where(reachable & np.isfinite(d), d, 0.0)


@dataclass(frozen=True, eq=False)  # hashed by identity: _plan caches one per parameter set
class _Plan:
    """Constants for one parameter set; slot s < n_sigma is σ_s, slot n_sigma is order −1.

    Arrays are indexed [slot, Z, g] (g = Gaussian of element Z's density).
    """

    orders: tuple[int, ...]
    sigmas: tuple[float, ...]
    max_order: int  # highest order ≥ 0, or −1 if only order −1 is requested
    with_density: bool  # order −1 requested
    decay: np.ndarray  # (slots, Z, G) exponent of exp(−decay d²), Å⁻²
    weight: np.ndarray  # (slots, Z, G, max_order + 1) A B (π/γ)^{3/2} λⁿ (order −1: B at n = 0)
    radius: np.ndarray  # (slots, Z, G) truncation radius, Å (0 for padding)
    self_term: np.ndarray  # (slots, Z) the centre's own d = 0 contribution to the n = 0 sums
    counts: np.ndarray  # (Z,) Gaussians per element (0 = unavailable)


def _validated(orders, sigmas, overlap_threshold) -> tuple[tuple[int, ...], tuple[float, ...]]:
    orders_t = tuple(int(n) for n in orders)
    sigmas_t = tuple(float(s) for s in sigmas)
    if not orders_t or any(n < -1 or n > MAX_ORDER for n in orders_t):
        raise ValueError(f"orders must be non-empty, each in -1..{MAX_ORDER}; got {orders}")
    if any(b <= a for a, b in zip(orders_t, orders_t[1:])):
        raise ValueError(f"orders must be strictly increasing, got {orders}")
    if any(n >= 0 for n in orders_t):
        if not sigmas_t or any(not s > 0 for s in sigmas_t):
            raise ValueError(f"sigmas must be non-empty and positive, got {sigmas}")
        if any(b <= a for a, b in zip(sigmas_t, sigmas_t[1:])):
            raise ValueError(f"sigmas must be strictly increasing, got {sigmas}")
    else:
        sigmas_t = ()
    if not 0 < overlap_threshold < 1:
        raise ValueError(f"overlap_threshold must be in (0, 1), got {overlap_threshold}")
    return orders_t, sigmas_t


@lru_cache(maxsize=64)
def _plan(
    orders: tuple[int, ...], sigmas: tuple[float, ...], overlap_threshold: float, psp: str
) -> _Plan:
    density = load_density(psp)
    B, beta = density.coefficients, density.exponents
    present = density.counts[:, None] > np.arange(B.shape[1])[None, :]
    spatial_orders = [n for n in orders if n >= 0]
    max_order = max(spatial_orders, default=-1)
    with_density = -1 in orders
    slots = len(sigmas) + int(with_density)
    shape = (slots, *B.shape)
    decay = np.ones(shape)
    weight = np.zeros((*shape, max(max_order, 0) + 1))
    radius = np.zeros(shape)
    for s, sigma in enumerate(sigmas):
        alpha = 1.0 / (2.0 * sigma * sigma)
        prefactor = (sigma * math.sqrt(2.0 * math.pi)) ** -3
        gamma = alpha + beta
        scale = beta / gamma
        amplitude = np.where(present, prefactor * B * (math.pi / gamma) ** 1.5, 0.0)
        decay[s] = alpha * beta / gamma
        for n in range(max_order + 1):
            weight[s, ..., n] = amplitude * scale**n
        radius[s] = np.max(
            [
                _truncation_radius(amplitude, decay[s], scale, n, overlap_threshold)
                for n in spatial_orders
            ],
            axis=0,
        )
    if with_density:
        amplitude = np.where(present, B, 0.0)
        decay[-1] = beta
        weight[-1, ..., 0] = amplitude
        radius[-1] = _truncation_radius(amplitude, beta, np.ones_like(beta), 0, overlap_threshold)
    for array in (decay, weight, radius):
        array.setflags(write=False)
    return _Plan(
        orders,
        sigmas,
        max_order,
        with_density,
        decay,
        weight,
        radius,
        weight[..., 0].sum(axis=-1),
        density.counts,
    )


_PARAMETERS = frozenset({"orders", "sigmas", "periodic", "overlap_threshold", "psp"})


def _plan_for(params: dict) -> tuple[_Plan, bool]:
    """(plan, periodic) of featurize parameters; validated once per distinct parameter set."""
    if "orders" in params and params.keys() <= _PARAMETERS:
        try:
            key = (
                tuple(params["orders"]),
                tuple(params.get("sigmas", ())),
                bool(params.get("periodic", True)),
                float(params.get("overlap_threshold", DEFAULT_OVERLAP_THRESHOLD)),
                str(params.get("psp", DEFAULT_PSP)),
            )
            hash(key)
        except TypeError:
            pass  # not hashable: validate (and report) below
        else:
            return _plan_for_key(key)
    return _plan_for_uncached(params)


@lru_cache(maxsize=64)
def _plan_for_key(key: tuple) -> tuple[_Plan, bool]:
    orders, sigmas, periodic, threshold, psp = key
    return _plan_for_uncached(
        dict(orders=orders, sigmas=sigmas, periodic=periodic, overlap_threshold=threshold, psp=psp)
    )


def _plan_for_uncached(params: dict) -> tuple[_Plan, bool]:
    orders = params.pop("orders")
    sigmas = params.pop("sigmas", ())
    periodic = bool(params.pop("periodic", True))
    threshold = float(params.pop("overlap_threshold", DEFAULT_OVERLAP_THRESHOLD))
    psp = str(params.pop("psp", DEFAULT_PSP))
    if params:
        raise TypeError(f"unknown GMP parameters: {sorted(params)}")
    orders_t, sigmas_t = _validated(orders, sigmas, threshold)
    return _plan(orders_t, sigmas_t, threshold, psp), periodic


def _check_elements(plan: _Plan, z: np.ndarray) -> None:
    bad = (z < 1) | (z >= len(plan.counts))
    bad[~bad] = plan.counts[z[~bad]] == 0
    if bad.any():
        raise ValueError(f"no GMP model density for atomic numbers {sorted(set(z[bad].tolist()))}")


# --------------------------------------------------------------------------------------------
# Public contract
# --------------------------------------------------------------------------------------------


def unsupported_elements(z, psp: str = DEFAULT_PSP, **_params) -> list[int]:
    """Atomic numbers of ``z`` (sorted, unique) without a model density in ``psp``: a structure
    holding one cannot get GMP features (QE-kjpaw covers H … Pu, Z = 1 … 94).

    Args:
        z: atomic numbers, any shape.
        psp: density file name; other featurize parameters are accepted and ignored, so a
            set's complete parameters can be passed.
    """
    counts = load_density(psp).counts
    elements = np.unique(np.asarray(z, dtype=np.int64))
    bad = (elements < 1) | (elements >= len(counts))
    bad[~bad] = counts[elements[~bad]] == 0
    return elements[bad].tolist()


def feature_names(**params) -> list[str]:
    """Feature names in output order: ``order=-1``, then ``order=n,sigma=s`` (n-major)."""
    plan, _ = _plan_for(dict(params))
    names = ["order=-1"] if plan.with_density else []
    names += [f"order={n},sigma={s:.6g}" for n in plan.orders if n >= 0 for s in plan.sigmas]
    return names


def required_radius(elements=None, **params) -> float:
    """Neighbour-list radius (Å) within which every term above ``overlap_threshold`` lies.

    Args:
        elements: optional atomic numbers of the structure; default all elements of the density
            file (the radius valid for any structure).
        **params: the featurize parameters (``orders``, ``sigmas``, ...).
    """
    plan, _ = _plan_for(dict(params))
    if elements is None:
        z = np.flatnonzero(plan.counts > 0)
    else:
        z = np.unique(np.asarray(elements, dtype=np.int64))
        _check_elements(plan, z)
    return float(plan.radius[:, z].max()) if len(z) else 0.0


def featurize(
    z, pos, cell, pbc, nl: NeighbourList, *, method: str = "auto", **params
) -> np.ndarray:
    """GMP features of every atom.

    Args:
        z: (N,) int atomic numbers (1 … 94 for ``QE-kjpaw``).
        pos: (N, 3) float64 Cartesian positions, Å.
        cell: (3, 3) float64 lattice vectors as rows, Å.
        pbc: (3,) bool periodicity (already reflected in ``nl``).
        nl: neighbour list with cutoff ≥ ``required_radius(elements=z, **params)`` (the
            structure-independent ``required_radius(**params)`` always suffices).
        **params: ``orders`` (increasing ints in −1..4), ``sigmas`` (increasing, Å),
            ``periodic`` (default True), ``overlap_threshold`` (default 1e-16), ``psp`` (default
            ``"QE-kjpaw"``). See the module docstring.
        method: evaluation path (not a parameter of the features): ``"auto"``, the compiled
            kernel (:mod:`builder.descriptors.gmp_kernel`) when it is available, else
            ``"numpy"``; ``"kernel"`` requires it; ``"numpy"``, the NumPy path (the kernel's
            reference and fallback). All agree to ~1e-14 of each atom's largest feature.

    Returns:
        (N, d) float64, columns as in ``feature_names(**params)``.
    """
    del pbc  # periodicity enters through the neighbour list
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    plan, periodic = _plan_for(params)
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    n_atoms = len(z)
    n_features = int(plan.with_density) + len(plan.sigmas) * sum(n >= 0 for n in plan.orders)
    out = np.zeros((n_atoms, n_features))
    if n_atoms == 0:
        return out
    elements = np.unique(z)
    terms = _terms(plan, tuple(elements.tolist()))
    if nl.cutoff < terms.radius * (1.0 - 1e-12):
        raise ValueError(
            f"neighbour list cutoff {nl.cutoff} Å is below the GMP radius {terms.radius:.4f} Å "
            "for these elements (see required_radius)"
        )
    if method == "kernel" or (method == "auto" and gmp_kernel.available()):
        rank = np.searchsorted(elements, z)
        kernel_plan = _kernel_plan(plan, tuple(elements.tolist()))
        return gmp_kernel.featurize(rank, pos, cell, nl, kernel_plan, periodic=periodic)
    nl = nl.within(terms.radius)
    neighbour, centre = nl.edge_index
    shift, dist = nl.edge_shift, nl.edge_dist
    if not periodic:
        # The as-run cluster: the N atoms at their given positions, no periodic images.
        keep = ~shift.any(axis=1)
        neighbour, centre, shift, dist = neighbour[keep], centre[keep], shift[keep], dist[keep]
    if np.any(centre[1:] < centre[:-1]):
        # Blocks of centres need edges grouped by centre (builder.neighbors' order).
        order = np.argsort(centre, kind="stable")
        neighbour, centre, shift, dist = neighbour[order], centre[order], shift[order], dist[order]
    edges = _Edges(
        neighbour,
        centre,
        shift,
        dist * dist,
        np.searchsorted(elements, z)[neighbour],
        np.ascontiguousarray(pos.T),
        cell,
    )
    edge_start = np.zeros(n_atoms + 1, dtype=np.int64)
    np.cumsum(np.bincount(centre, minlength=n_atoms), out=edge_start[1:])
    # Blocks of consecutive centres bound the work arrays (~ terms × layers of the block).
    first = 0
    while first < n_atoms:
        if edge_start[-1] - edge_start[first] <= _EDGES_PER_BLOCK:
            last = n_atoms
        else:
            last = int(
                np.searchsorted(edge_start, edge_start[first] + _EDGES_PER_BLOCK, side="right") - 1
            )
            last = min(max(last, first + 1), n_atoms)
        _featurize_block(
            plan, terms, z[first:last], edges, edge_start[first : last + 1], out[first:last]
        )
        first = last
    return out


class _Terms(NamedTuple):
    """The (slot, element, Gaussian) terms of a plan for one set of elements, each with its
    truncation radius as a threshold on the edge key ``rank · stride + d²`` (rank: the
    neighbour's index in the structure's sorted elements).

    ``thresholds`` holds, per element in rank order, the keys r² + rank · stride of its terms
    sorted, then a sentinel (rank + ½) · stride (``end[rank]``, its position). For an edge,
    b = #{thresholds ≤ key} (``searchsorted(..., side="right")``) is then the position of the
    first of its element's terms whose radius it lies within, and those terms are exactly
    positions b … end[rank] − 1: one contiguous run per edge.
    """

    radius: float  # widest truncation radius of these elements, Å
    stride: float  # key stride per element rank, Å² (> 2 × the largest r²)
    thresholds: np.ndarray  # (M,) float64 sorted keys
    end: np.ndarray  # (elements,) int64 position of each element's sentinel
    slot: np.ndarray  # (M,) int64 slot of each threshold's term (0 for sentinels)
    table: np.ndarray  # (1 + layers, M) float64: −decay (Å⁻²), then weight per n = 0 … n_max


@lru_cache(maxsize=4096)
def _element_terms(
    plan: _Plan, atomic_number: int
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """One element's terms by increasing radius: (widest radius Å, r² Å², slot, table rows)."""
    n_gauss = int(plan.counts[atomic_number])
    r = plan.radius[:, atomic_number, :n_gauss]
    slot, gauss = np.nonzero(r > 0)
    by_radius = np.argsort(r[slot, gauss], kind="stable")
    slot, gauss = slot[by_radius], gauss[by_radius]
    table = np.concatenate(
        [
            -plan.decay[slot, atomic_number, gauss][None, :],
            plan.weight[slot, atomic_number, gauss].T,
        ]
    )
    return float(r.max()), r[slot, gauss] ** 2, slot.astype(np.int64), table


@lru_cache(maxsize=1024)
def _terms(plan: _Plan, elements: tuple[int, ...]) -> _Terms:
    """The terms of the elements ``elements`` (sorted, unique); ValueError for one without a
    model density."""
    counts = plan.counts
    if any(not 0 < z < len(counts) or counts[z] == 0 for z in elements):
        _check_elements(plan, np.asarray(elements, dtype=np.int64))  # raises
    parts = [_element_terms(plan, atomic_number) for atomic_number in elements]
    radius = max(part[0] for part in parts)
    stride = 2.0 ** (math.ceil(math.log2(radius * radius + 1.0)) + 1)
    sizes = np.array([len(part[1]) + 1 for part in parts])
    thresholds = np.concatenate([np.append(part[1], 0.5 * stride) for part in parts])
    thresholds += np.repeat(np.arange(len(parts)) * stride, sizes)
    sentinel = np.zeros((plan.weight.shape[-1] + 1, 1))
    arrays = (
        thresholds,
        np.cumsum(sizes) - 1,
        np.concatenate([np.append(part[2], 0) for part in parts]),
        np.concatenate([b for part in parts for b in (part[3], sentinel)], axis=1),
    )
    for array in arrays:
        array.setflags(write=False)
    return _Terms(radius, stride, *arrays)


@lru_cache(maxsize=1024)
def _kernel_plan(plan: _Plan, elements: tuple[int, ...]) -> gmp_kernel.KernelPlan:
    """The compiled kernel's constants for the elements ``elements`` (sorted, unique, checked)."""
    parts = [_element_terms(plan, atomic_number) for atomic_number in elements]
    return gmp_kernel.kernel_plan(
        [(r2, slot, -table[0], table[1:]) for _, r2, slot, table in parts],
        plan.self_term[:, list(elements)],
        len(plan.sigmas),
        plan.with_density,
        plan.orders,
        plan.max_order,
        [maxwell_cartesian(n)[:2] for n in range(1, plan.max_order + 1)],
    )


@cache
def _moment_tables(
    max_order: int, orders: tuple[int, ...]
) -> tuple[np.ndarray, list[slice], np.ndarray, np.ndarray]:
    """Monomials and harmonics of orders 1 … max_order, all components concatenated.

    Returns:
        exponents: (3, K) int64 powers of x, y, z of each monomial (``_components`` order).
        rows: per order n = 1 … max_order, its slice of the K components.
        harmonics: (K, K) float64 block-diagonal ``maxwell_cartesian`` coefficients.
        invariants: (R, K) float64, row r: the invariant weights n!/(kx! ky! kz!) of the r-th
            requested order n ≥ 1 on its components (0 elsewhere).
    """
    components = [k for n in range(1, max_order + 1) for k in _components(n)]
    exponents = np.array(components, dtype=np.int64).T.reshape(3, -1)
    harmonics = np.zeros((len(components), len(components)))
    requested = [n for n in orders if n >= 1]
    invariants = np.zeros((len(requested), len(components)))
    rows, start = [], 0
    for n in range(1, max_order + 1):
        coefficients, weights, _ = maxwell_cartesian(n)
        rows.append(slice(start, start + len(weights)))
        harmonics[rows[-1], rows[-1]] = coefficients
        if n in requested:
            invariants[requested.index(n), rows[-1]] = weights
        start += len(weights)
    return exponents, rows, harmonics, invariants


@dataclass(frozen=True)
class _Edges:
    """The edges a structure's features sum over (grouped by centre)."""

    neighbour: np.ndarray  # (E,) j
    centre: np.ndarray  # (E,) i
    shift: np.ndarray  # (E, 3) int image offsets
    dist2: np.ndarray  # (E,) |d|², Å²
    rank: np.ndarray  # (E,) the neighbour's index in the structure's sorted elements
    pos_t: np.ndarray  # (3, N) positions by axis, Å
    cell: np.ndarray  # (3, 3) lattice vectors as rows, Å

    def vectors(self, edge_range: slice) -> np.ndarray:
        """(3, E') d = r_j + shift·cell − r_i of a contiguous range of edges, by axis, Å."""
        # A (3, 3) @ (3, E) product and take(): row gathers and transposes of (E, 3) arrays
        # cost several times more.
        j, i = self.neighbour[edge_range], self.centre[edge_range]
        vectors = self.cell.T @ self.shift[edge_range].astype(np.float64).T
        for axis in range(3):
            vectors[axis] += self.pos_t[axis].take(j)
            vectors[axis] -= self.pos_t[axis].take(i)
        return vectors


def _featurize_block(
    plan: _Plan,
    terms: _Terms,
    z_centre: np.ndarray,
    edges: _Edges,
    edge_start: np.ndarray,
    out: np.ndarray,
) -> None:
    """Features of consecutive centres (their edges ``edge_start[0] … edge_start[-1] − 1``,
    grouped by centre) into ``out`` (Nb, d): the radial weights of every edge
    (:func:`_radial_weights`) in a padded (centre, column) table, the density and order-0 sums,
    then the moments of orders ≥ 1 (:func:`_moment_features`)."""
    lo, hi = int(edge_start[0]), int(edge_start[-1])
    n_centres = len(z_centre)
    per_centre = np.diff(edge_start)
    columns = max(int(per_centre.max()), 1)  # ≥ 1: a block may have no edges at all
    # (centre, column) of every edge: the edges of centre c fill columns 0 … count_c − 1.
    row = np.repeat(np.arange(n_centres), per_centre)
    flat = row * columns + (np.arange(hi - lo) - np.repeat(edge_start[:-1] - lo, per_centre))
    weights = _radial_weights(
        plan, terms, edges.dist2[lo:hi], edges.rank[lo:hi], row, flat, n_centres, columns
    )
    zeroth = weights[0].sum(axis=2)  # (Nb, slots): n = 0 sums over the edges
    zeroth += plan.self_term[:, z_centre].T  # the centre's own d = 0 term (n = 0 only)
    n_sigma = len(plan.sigmas)
    column = 0
    if plan.with_density:
        np.abs(zeroth[:, -1], out=out[:, 0])
        column = 1
    if 0 in plan.orders:
        np.abs(zeroth[:, :n_sigma], out=out[:, column : column + n_sigma])
        column += n_sigma
    if plan.max_order >= 1:
        _moment_features(plan, weights, edges.vectors(slice(lo, hi)), flat, out[:, column:])


def _radial_weights(
    plan: _Plan,
    terms: _Terms,
    dist2: np.ndarray,
    rank: np.ndarray,
    row: np.ndarray,
    flat: np.ndarray,
    n_centres: int,
    columns: int,
) -> np.ndarray:
    """weights[n, c, slot, column] = Σ_g weight_g λ_gⁿ exp(−decay_g d²) of that column's edge,
    over the Gaussians of its element whose radius it lies within: (layers, Nb, slots, columns),
    0 in padding.

    Every (edge, term) pair within the term's radius is evaluated once: an edge's terms are one
    run of the thresholds (see :class:`_Terms`), the runs are concatenated into one exp call and
    the products with each order's weight summed into the table by one ``bincount``.
    """
    slots, layers = plan.decay.shape[0], plan.weight.shape[-1]
    first = np.searchsorted(terms.thresholds, rank * terms.stride + dist2, side="right")
    count = terms.end[rank] - first
    run_end = np.cumsum(count)
    total = int(run_end[-1]) if len(run_end) else 0
    # (edge, term) pairs edge-major: pair p belongs to edge #{runs ended at or before p} and is
    # term first_e + (p − run start of e). Arrays are (layers, T): long unit-stride rows.
    pair_edge = np.cumsum(np.bincount(run_end[:-1], minlength=total + 1)[:total])
    term = np.arange(total) + (first - run_end + count)[pair_edge]
    constants = np.take(terms.table, term, axis=1)  # (1 + layers, T)
    values = dist2[pair_edge] * constants[0]
    np.exp(values, out=values)
    # flat = c · columns + column  ->  (c, slot, column) in (Nb, slots, columns), then + layer.
    index = (flat + row * ((slots - 1) * columns))[pair_edge] + (terms.slot * columns)[term]
    layer_stride = n_centres * slots * columns
    index = index + np.arange(0, layers * layer_stride, layer_stride)[:, None]
    products = constants[1:]
    products *= values
    weights = np.bincount(index.ravel(), weights=products.ravel(), minlength=layers * layer_stride)
    # (float64 also when there are no pairs: bincount then returns int64 zeros)
    return weights.astype(np.float64, copy=False).reshape(layers, n_centres, slots, columns)


def _moment_features(
    plan: _Plan, weights: np.ndarray, vectors: np.ndarray, flat: np.ndarray, out: np.ndarray
) -> None:
    """Per requested order n ≥ 1 the rotation invariants of the Maxwell–Cartesian moments
    Σ_columns monomial · weight_n into ``out`` (Nb, n_sigma · requested orders ≥ 1),
    order-major.

    Args:
        weights: (layers, Nb, slots, columns) from :func:`_radial_weights`.
        vectors: (3, E') edge vectors d of the block, Å.
        flat: (E',) padded (centre, column) position of each edge.
    """
    _, n_centres, _, columns = weights.shape
    n_sigma, max_order = len(plan.sigmas), plan.max_order
    exponents, rows, harmonics, invariants = _moment_tables(max_order, plan.orders)
    # powers[axis, p] = (d_axis)^p in the padded layout (0 in padding for p ≥ 1).
    powers = np.empty((3, max_order + 1, n_centres * columns))
    powers[:, 0] = 1.0
    powers[:, 1] = 0.0
    powers[:, 1, flat] = vectors
    for p in range(2, max_order + 1):
        np.multiply(powers[:, p - 1], powers[:, 1], out=powers[:, p])
    monomials = powers[0, exponents[0]]
    monomials *= powers[1, exponents[1]]
    monomials *= powers[2, exponents[2]]
    monomials = monomials.reshape(-1, n_centres, columns).transpose(1, 0, 2)  # (Nb, K, columns)
    # moments[c, m, s] = Σ_columns monomial_m · weight(n, s); then M_k = C · monomials.
    moments = np.empty((n_centres, monomials.shape[1], n_sigma))
    for n, components in enumerate(rows, start=1):
        moments[:, components] = np.matmul(
            monomials[:, components], weights[n, :, :n_sigma].transpose(0, 2, 1)
        )
    mu = np.matmul(harmonics, moments)  # (Nb, K, n_sigma)
    mu *= mu
    np.sqrt(np.matmul(invariants, mu).reshape(n_centres, -1), out=out)
