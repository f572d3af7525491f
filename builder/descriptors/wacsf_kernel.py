"""Optional compiled wACSF kernel: loading, admission and a NumPy-facing wrapper.

The C extension ``builder.descriptors._wacsf_kernel`` (``_wacsf_kernel.c``, built by ``setup.py``
when a C compiler is available; a failed build does not fail installation) evaluates
:func:`builder.descriptors.wacsf.featurize` in one pass over the edges: per edge with d < rc the
weight Z_j f_c(d), then Z_j f_c(d) exp(−η (d − Rs)²) for every column (η, Rs) in one vectorised
loop (a polynomial exp, ~1 ulp), added to the centre's row. One exp per (edge, η, Rs), as a
term-by-term loop: no lattice, no powers, so any (η, Rs) grid is evaluated to ~1e-15 relative.
The NumPy paths of :mod:`builder.descriptors.wacsf` stay the reference and the fallback.

Loading (:mod:`builder.descriptors._kernel_loader`, shared by the three kernels):
:func:`available` is True when the extension imports, its calling convention (``ABI``)
matches this file and (in a source tree) the source hash compiled into it equals the current
``_wacsf_kernel.c``: a stale build is refused (rebuild with ``pip install -e .``);
:func:`unavailable_reason` says why not.
Variants (:func:`isas`): ``generic`` (SSE2, any x86-64; 3-4x slower than ``avx2``) and
``avx2`` (AVX2 + FMA), the widest the CPU runs is used; ``FP_WACSF_KERNEL`` overrides at
import: ``0`` / ``off`` disables the kernel, a variant name selects that variant. :data:`ISA`
holds the variant in use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fingerprint_pretrain.builder.descriptors._kernel_loader import (
    checked_isa,
    load_extension,
    open_kernel,
)
from fingerprint_pretrain.builder.neighbors import NeighbourList

__all__ = ["ISA", "available", "featurize", "isas"]

# Calling convention of _wacsf_kernel.featurize; must equal the C file's WACSF_KERNEL_ABI.
ABI = 1
_SOURCE = Path(__file__).with_name("_wacsf_kernel.c")


def _load():
    """(extension module or None, reason it is unavailable or None)."""
    return load_extension("_wacsf_kernel", ABI, _SOURCE, "FP_WACSF_KERNEL")


# The extension (None when unavailable, with the reason), its variants, those this CPU runs, and
# the variant used by featurize (None when the kernel is unavailable).
_EXTENSION, _REASON, _ALL_ISAS, _SUPPORTED, ISA = open_kernel(*_load(), "FP_WACSF_KERNEL")


def available() -> bool:
    """Whether the compiled kernel can be used."""
    return _EXTENSION is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    return _REASON


def isas() -> tuple[str, ...]:
    """Instruction-set variants this CPU can run, the widest last (empty when unavailable)."""
    return _SUPPORTED if _EXTENSION is not None else ()


def featurize(
    z: np.ndarray,
    nl: NeighbourList,
    eta_columns: np.ndarray,
    rs_columns: np.ndarray,
    rc: float,
    isa: str | None = None,
) -> np.ndarray:
    """wACSF of every atom with the compiled kernel: (N, F) float64, C-contiguous.

    Args:
        z: (N,) int64 atomic numbers.
        nl: neighbour list complete within ``rc`` (edges in any order; edges with d ≥ rc, as in
            a wider list, are skipped).
        eta_columns: (F,) float64 η of each output column, Å⁻² (η slowest, as
            :func:`~builder.descriptors.wacsf.feature_names`).
        rs_columns: (F,) float64 Rs of each output column, Å.
        rc: cutoff radius, Å.
        isa: instruction-set variant (default :data:`ISA`).
    """
    if _EXTENSION is None:
        raise RuntimeError(f"the compiled wACSF kernel is unavailable: {_REASON}")
    variant = checked_isa(isa, ISA, _SUPPORTED)
    out = np.empty((len(z), len(eta_columns)))
    _EXTENSION.featurize(
        np.ascontiguousarray(z, dtype=np.int64),
        np.ascontiguousarray(nl.edge_index, dtype=np.int64),
        np.ascontiguousarray(nl.edge_dist, dtype=np.float64),
        np.ascontiguousarray(eta_columns, dtype=np.float64),
        np.ascontiguousarray(rs_columns, dtype=np.float64),
        float(rc),
        out,
        _ALL_ISAS.index(variant),
    )
    return out
