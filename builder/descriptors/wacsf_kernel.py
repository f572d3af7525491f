"""Optional compiled wACSF kernel: loading, admission and a NumPy-facing wrapper.

The C extension ``builder.descriptors._wacsf_kernel`` (``_wacsf_kernel.c``, built by ``setup.py``
when a C compiler is available; a failed build does not fail installation) evaluates
:func:`builder.descriptors.wacsf.featurize` in one pass over the edges: per edge with d < rc the
weight Z_j f_c(d), then Z_j f_c(d) exp(−η (d − Rs)²) for every column (η, Rs) in one vectorised
loop (a polynomial exp, ~1 ulp), added to the centre's row. One exp per (edge, η, Rs), as a
term-by-term loop: no lattice, no powers, so any (η, Rs) grid is evaluated to ~1e-15 relative.
The NumPy paths of :mod:`builder.descriptors.wacsf` stay the reference and the fallback.

Loading, as for the GMP kernel (:mod:`builder.descriptors.gmp_kernel`): :func:`available` is
True when the extension imports, its calling convention (``ABI``) matches this file and (in a
source tree) the source hash compiled into it equals the current ``_wacsf_kernel.c``: a stale
build is refused (rebuild with ``pip install -e .``); :func:`unavailable_reason` says why not.
Variants (:func:`isas`): ``generic`` (SSE2, any x86-64; 3-4x slower than ``avx2``) and
``avx2`` (AVX2 + FMA), the widest the CPU runs is used; ``FP_WACSF_KERNEL`` overrides at
import: ``0`` / ``off`` disables the kernel, a variant name selects that variant. :data:`ISA`
holds the variant in use.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from fingerprint_pretrain.builder.neighbors import NeighbourList

__all__ = ["ISA", "available", "featurize", "isas"]

# Calling convention of _wacsf_kernel.featurize; must equal the C file's WACSF_KERNEL_ABI.
ABI = 1
_SOURCE = Path(__file__).with_name("_wacsf_kernel.c")


def _source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load():
    """(extension module or None, reason it is unavailable or None)."""
    setting = os.environ.get("FP_WACSF_KERNEL", "").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return None, f"disabled by FP_WACSF_KERNEL={setting}"
    try:
        from fingerprint_pretrain.builder.descriptors import _wacsf_kernel as extension
    except ImportError as error:
        return None, f"the extension is not built ({error}); install with a C compiler present"
    if getattr(extension, "ABI", None) != ABI:
        return None, (
            f"built for ABI {getattr(extension, 'ABI', None)}, this wrapper needs {ABI}: "
            "rebuild (pip install -e .)"
        )
    built_from = getattr(extension, "SOURCE_HASH", "")
    if built_from and _SOURCE.exists() and built_from != _source_hash(_SOURCE):
        return None, (
            f"stale build: {_SOURCE.name} changed since it was compiled; rebuild (pip install -e .)"
        )
    return extension, None


_EXTENSION, _REASON = _load()
_ALL_ISAS: tuple[str, ...] = _EXTENSION.ALL_ISAS if _EXTENSION else ()
_SUPPORTED: tuple[str, ...] = _EXTENSION.isas() if _EXTENSION else ()


def _initial_isa() -> str | None:
    global _EXTENSION, _REASON
    if _EXTENSION is None:
        return None
    wanted = os.environ.get("FP_WACSF_KERNEL", "").strip().lower()
    if wanted in ("", "1", "on", "auto", "true", "yes"):
        return _SUPPORTED[-1]
    if wanted not in _SUPPORTED:
        _EXTENSION, _REASON = None, f"FP_WACSF_KERNEL={wanted}: not one of {_SUPPORTED}"
        return None
    return wanted


# Instruction-set variant used by featurize (None when the kernel is unavailable).
ISA: str | None = _initial_isa()


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
    variant = ISA if isa is None else isa
    if variant not in _SUPPORTED:
        raise ValueError(f"instruction set {variant!r} not supported here ({_SUPPORTED})")
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
