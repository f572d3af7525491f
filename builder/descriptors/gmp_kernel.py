"""Optional compiled GMP kernel: loading, plan layout and a NumPy-facing wrapper.

The C extension ``builder.descriptors._gmp_kernel`` (``_gmp_kernel.c``, built by ``setup.py``
when a C compiler is available; a failed build does not fail installation) evaluates
:func:`builder.descriptors.gmp.featurize` in one pass over the edges: per chunk of 8 edges of
one centre, every (edge, Gaussian term) pair within the term's truncation radius (each
element's terms sorted by decreasing radius: a prefix per edge) gets one exp, the radial
weights Σ_g weight_g λ_gⁿ exp(−decay_g d²) per (σ, n) are summed per edge, and the moments
Σ_edges weight · monomial(d) accumulated per atom; per atom at the end the self-term, the
Maxwell-Cartesian coefficients and the invariants. Same definition, truncation and output as
the NumPy path of :mod:`builder.descriptors.gmp`, which stays the reference and the fallback:
the two agree to ~1e-14 of each atom's largest feature (tests).

Loading (:mod:`builder.descriptors._kernel_loader`, shared by the three kernels):
:func:`available` is True when the extension imports, its calling convention (``ABI``)
matches this file and (in a source tree) the source hash compiled into it equals the current
``_gmp_kernel.c``: a stale build is refused (rebuild with ``pip install -e .``);
:func:`unavailable_reason` says why not.
Variants (:func:`isas`): ``generic`` (SSE2, any x86-64) and ``avx2`` (AVX2 + FMA), the widest
the CPU runs is used; ``FP_GMP_KERNEL`` overrides at import: ``0`` / ``off`` disables the
kernel, a variant name selects that variant. :data:`ISA` holds the variant in use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fingerprint_pretrain.builder.descriptors._kernel_loader import (
    checked_isa,
    load_extension,
    open_kernel,
)
from fingerprint_pretrain.builder.neighbors import NeighbourList

__all__ = ["ISA", "KernelPlan", "available", "featurize", "isas", "kernel_plan"]

# Calling convention of _gmp_kernel.featurize; must equal the C file's GMP_KERNEL_ABI.
ABI = 1
_SOURCE = Path(__file__).with_name("_gmp_kernel.c")


def _load():
    """(extension module or None, reason it is unavailable or None)."""
    return load_extension("_gmp_kernel", ABI, _SOURCE, "FP_GMP_KERNEL")


# The extension (None when unavailable, with the reason), its variants, those this CPU runs, and
# the variant used by featurize (None when the kernel is unavailable).
_EXTENSION, _REASON, _ALL_ISAS, _SUPPORTED, ISA = open_kernel(*_load(), "FP_GMP_KERNEL")


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
    """Constants of one GMP parameter set and one set of elements, as ``_gmp_kernel`` reads them.

    Attributes:
        iplan: int64 [n_sigma, with_density, has_order0, max_order, n_ranks, n_terms,
            n_requested, requested orders ≥ 1 …, term_start (n_ranks + 1) …, term_slot …].
        dplan: float64 [terms (n_terms × (2 + layers): r² Å², −decay Å⁻², weight per n), self
            (n_ranks × slots), harmonics per order 1 … max_order (K_n × K_n), invariant weights
            per order (K_n)].
        n_features: features per atom.
    """

    iplan: np.ndarray
    dplan: np.ndarray
    n_features: int


def kernel_plan(
    element_terms: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    self_term: np.ndarray,
    n_sigma: int,
    with_density: bool,
    orders: tuple[int, ...],
    max_order: int,
    harmonics: list[tuple[np.ndarray, np.ndarray]],
) -> KernelPlan:
    """The kernel's constants (callers cache the result per parameter set and elements).

    Args:
        element_terms: per element (in rank order) its terms by *increasing* radius: r² (T,)
            Å², slot (T,) (σ index, or ``n_sigma`` for the density), decay (T,) Å⁻² and
            weights (layers, T) (weight_g λ_gⁿ per order n = 0 … layers − 1).
        self_term: (slots, elements) the centre's own d = 0 term per slot.
        n_sigma: number of widths σ.
        with_density: order −1 requested (slot ``n_sigma``).
        orders: the requested orders (−1 … 4, increasing).
        max_order: the highest order ≥ 0, or −1 when only order −1 is requested.
        harmonics: per order n = 1 … max_order, ``maxwell_cartesian(n)``'s (coefficients
            (K_n, K_n), invariant weights (K_n,)).
    """
    layers = max(max_order, 0) + 1
    if len(harmonics) != max(max_order, 0):
        raise ValueError(f"need the harmonics of orders 1 … {max_order}, got {len(harmonics)}")
    requested = [n for n in orders if n >= 1]
    starts, slots, rows = [0], [], []
    for r2, slot, decay, weights in element_terms:
        order = np.arange(len(r2))[::-1]  # decreasing radius: an edge's terms are a prefix
        rows.append(np.column_stack([r2[order], -decay[order], weights[:, order].T]))
        slots.append(slot[order])
        starts.append(starts[-1] + len(r2))
    terms = np.concatenate(rows) if rows else np.zeros((0, 2 + layers))
    iplan = np.concatenate(
        [
            [n_sigma, int(with_density), int(0 in orders), max_order],
            [len(element_terms), starts[-1], len(requested)],
            requested,
            starts,
            np.concatenate(slots) if slots else [],
        ]
    ).astype(np.int64)
    dplan = np.concatenate(
        [
            terms.ravel(),
            np.asarray(self_term, dtype=np.float64).T.ravel(),
            *(np.asarray(c, dtype=np.float64).ravel() for c, _ in harmonics),
            *(np.asarray(w, dtype=np.float64) for _, w in harmonics),
        ]
    )
    iplan.flags.writeable = dplan.flags.writeable = False
    n_features = int(with_density) + n_sigma * (int(0 in orders) + len(requested))
    return KernelPlan(iplan, dplan, n_features)


def featurize(
    rank: np.ndarray,
    pos: np.ndarray,
    cell: np.ndarray,
    nl: NeighbourList,
    plan: KernelPlan,
    periodic: bool = True,
    isa: str | None = None,
) -> np.ndarray:
    """GMP features of every atom with the compiled kernel: (N, d) float64.

    Args:
        rank: (N,) int64 index of each atom's element in the plan's elements.
        pos: (N, 3) float64 positions, Å.
        cell: (3, 3) float64 lattice vectors as rows, Å.
        nl: neighbour list complete within the plan's radius (edges in any order; wider lists
            are fine: edges beyond every term's radius are skipped).
        plan: from :func:`kernel_plan`.
        periodic: False keeps only zero-shift edges (the finite cluster).
        isa: instruction-set variant (default :data:`ISA`).
    """
    if _EXTENSION is None:
        raise RuntimeError(f"the compiled GMP kernel is unavailable: {_REASON}")
    variant = checked_isa(isa, ISA, _SUPPORTED)
    out = np.empty((len(rank), plan.n_features))
    _EXTENSION.featurize(
        np.ascontiguousarray(rank, dtype=np.int64),
        np.ascontiguousarray(pos, dtype=np.float64),
        np.ascontiguousarray(cell, dtype=np.float64),
        np.ascontiguousarray(nl.edge_index, dtype=np.int64),
        np.ascontiguousarray(nl.edge_shift, dtype=np.int64),
        np.ascontiguousarray(nl.edge_dist, dtype=np.float64),
        plan.iplan,
        plan.dplan,
        out,
        bool(periodic),
        _ALL_ISAS.index(variant),
    )
    return out
