"""The nine per-atom label sets of the paper (Table 3), registered by name.

``REGISTRY`` maps ``wacsfset1..3``, ``gmpset1..3`` and ``eadset1..3`` to a :class:`DescriptorSpec`:
a family (the module ``builder.descriptors.<family>``) plus the complete, JSON-serialisable keyword
arguments of that family's functions. Every family module exposes the same three pure functions::

    featurize(z, pos, cell, pbc, nl, **params) -> (N, d) float64
    feature_names(**params) -> list[str]          # length d, output order
    required_radius(**params) -> float            # neighbour-list radius needed, Å

This file is the single place where the parameter values live.

* wACSF (Table 3): Rs / η grids as printed; set 3's Rs = 0, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 7,
  8, 9, 10 (14 values, 10 η: 140 features). Cutoff ``rc`` = 8 Å for all three (decision, see
  :mod:`fingerprint_pretrain.builder.descriptors.wacsf`). Dimensions 48 / 20 / 140.
* EAD (Table 3): L = 2 / 1 / 1, η = (1, 5) / (1, 2, 5, 10) / (1, 2, 3, 5), Rs =
  ``np.arange(0, stop, 0.05)`` (values stored exactly as numpy produces them), ``rc`` = stop =
  8 / 12 / 8 Å. Per-atom dimensions 960 / 1920 / 1280 (decision: Table 3's numbers are twice
  these, a structure-level pooling; see :mod:`fingerprint_pretrain.builder.descriptors.ead`).
* GMP (Table 3, as the authors generated them): σ = ``linspace(0, S, K+1)[1:]`` with (S, K) =
  (2.0, 4), (0.3, 3), (1.0, 6); orders −1…2, −1…2, −1…4; periodic, overlap threshold 1e-16,
  ``QE-kjpaw`` densities. Dimensions 13 / 10 / 31. Featurisation lives in
  :mod:`fingerprint_pretrain.builder.descriptors.gmp`.

Family modules are imported lazily, the first time a spec's ``feature_names``, ``radius``, ``dim``
or ``compute`` is used, so importing the registry never fails because one family is broken or
absent (and stays cheap).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from types import ModuleType

import numpy as np
from fingerprint_pretrain.builder.neighbors import NeighbourList

__all__ = [
    "AUTO_COMPRESS_MIN_DIM",
    "REGISTRY",
    "DescriptorSpec",
    "UnknownDescriptorError",
    "get",
    "resolve",
    "resolve_names",
    "storage_codecs",
]

FAMILIES = ("wacsf", "gmp", "ead")
AUTO_COMPRESS_MIN_DIM = 256  # codec "auto" compresses sets at least this wide (the EAD sets)


@functools.cache
def _family_module(family: str) -> ModuleType:
    """``fingerprint_pretrain.builder.descriptors.<family>``, imported once per process (a spec
    keeps no module reference itself, so it stays picklable for the build's workers)."""
    return importlib.import_module(f"fingerprint_pretrain.builder.descriptors.{family}")


@dataclass(frozen=True)
class DescriptorSpec:
    """One named label set: a family and its complete parameters.

    Attributes:
        name: registry name, e.g. ``"eadset1"``.
        family: ``"wacsf"``, ``"gmp"`` or ``"ead"`` (module ``builder.descriptors.<family>``).
        params: keyword arguments of the family's functions; JSON-serialisable, not to be mutated.

    Derived (computed by the family module on first use, then cached):
        feature_names: tuple of d names in output order.
        radius: neighbour-list radius the set needs, Å.
        dim: d, features per atom.
    """

    name: str
    family: str
    params: dict = field(hash=False)

    @property
    def module(self) -> ModuleType:
        """The family module (imported on first use)."""
        return _family_module(self.family)

    @cached_property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.module.feature_names(**self.params))

    @cached_property
    def radius(self) -> float:
        return float(self.module.required_radius(**self.params))

    def radius_for(self, z: np.ndarray) -> float:
        """Radius needed for a structure made of the elements in ``z`` (≤ :attr:`radius`);
        families whose reach depends on the elements (GMP) give a smaller one."""
        fn = self.module.required_radius
        if "elements" in inspect.signature(fn).parameters:
            return float(fn(elements=z, **self.params))
        return self.radius

    @property
    def dim(self) -> int:
        return len(self.feature_names)

    def compute(
        self,
        z: np.ndarray,
        pos: np.ndarray,
        cell: np.ndarray,
        pbc: np.ndarray,
        nl: NeighbourList,
    ) -> np.ndarray:
        """(N, dim) float64 features of every atom; ``nl`` must be complete within ``radius``
        (a wider list is fine, the family cuts it)."""
        return self.module.featurize(z, pos, cell, pbc, nl, **self.params)


class UnknownDescriptorError(KeyError):
    """A descriptor name that is not in :data:`REGISTRY`."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def _wacsf(etas: list[float], rs: list[float]) -> dict:
    return {"etas": etas, "rs": rs, "rc": 8.0}


def _ead(max_l: int, etas: list[float], stop: float) -> dict:
    return {"L": max_l, "etas": etas, "rs": np.arange(0.0, stop, 0.05).tolist(), "rc": stop}


def _gmp(orders: list[int], stop: float, count: int) -> dict:
    return {
        "orders": orders,
        "sigmas": np.linspace(0.0, stop, count + 1)[1:].tolist(),
        "periodic": True,
        "overlap_threshold": 1e-16,
        "psp": "QE-kjpaw",
    }


_PARAMS: dict[str, tuple[str, dict]] = {
    "wacsfset1": (
        "wacsf",
        _wacsf([0.01, 0.1, 0.4, 1.0, 3.5, 5.0], [0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0]),
    ),
    "wacsfset2": ("wacsf", _wacsf([0.01, 0.1, 0.4, 1.0], [0.0, 1.0, 2.0, 3.0, 4.0])),
    "wacsfset3": (
        "wacsf",
        _wacsf(
            [0.01, 0.06, 0.1, 0.2, 0.4, 0.7, 1.0, 2.0, 3.5, 5.0],
            [0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
        ),
    ),
    "gmpset1": ("gmp", _gmp([-1, 0, 1, 2], 2.0, 4)),
    "gmpset2": ("gmp", _gmp([-1, 0, 1, 2], 0.3, 3)),
    "gmpset3": ("gmp", _gmp([-1, 0, 1, 2, 3, 4], 1.0, 6)),
    "eadset1": ("ead", _ead(2, [1.0, 5.0], 8.0)),
    "eadset2": ("ead", _ead(1, [1.0, 2.0, 5.0, 10.0], 12.0)),
    "eadset3": ("ead", _ead(1, [1.0, 2.0, 3.0, 5.0], 8.0)),
}

#: name -> spec for the nine sets, in the paper's order (wACSF, GMP, EAD; sets 1-3).
REGISTRY: dict[str, DescriptorSpec] = {
    name: DescriptorSpec(name, family, params) for name, (family, params) in _PARAMS.items()
}


def get(name: str) -> DescriptorSpec:
    """The spec registered as ``name``; :class:`UnknownDescriptorError` (a ``KeyError``) listing
    the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownDescriptorError(
            f"unknown descriptor set {name!r}; known: {', '.join(REGISTRY)} "
            f"(or a family {', '.join(FAMILIES)}, or 'all')"
        ) from None


def resolve(names: str | Iterable[str]) -> list[DescriptorSpec]:
    """Specs for a selection, in registry order, without duplicates.

    Args:
        names: registry names, family names (``"ead"`` = ``eadset1..3``) or ``"all"``; a single
            string may hold several, comma-separated (``"wacsfset1,eadset1"``).
    """
    if isinstance(names, str):
        names = [names]
    wanted: set[str] = set()
    for item in names:
        for name in (part.strip() for part in str(item).split(",")):
            if not name:
                continue
            if name == "all":
                wanted.update(REGISTRY)
            elif name in FAMILIES:
                wanted.update(n for n, s in REGISTRY.items() if s.family == name)
            else:
                wanted.add(get(name).name)
    return [spec for name, spec in REGISTRY.items() if name in wanted]


def resolve_names(names: str | Iterable[str]) -> list[str]:
    """Registry names of a selection (see :func:`resolve`), in registry order."""
    return [spec.name for spec in resolve(names)]


def storage_codecs(names: list[str], codec: str = "auto") -> dict[str, str]:
    """Storage codec per label set: ``codec`` for all, or for ``"auto"`` byte shuffle + Zstandard
    (``shuffle-zstd``) for sets of at least :data:`AUTO_COMPRESS_MIN_DIM` features (the sizes
    they reach: README, "Descriptor label sets") and raw bytes for the narrow ones.

    ``shuffle-zstd`` rather than ``shuffle-zlib``: as small (EAD set 2 of MP-20: 3,061 vs 3,154
    B/atom) and ~3x faster to decode (91 vs 296 µs of loader-worker CPU per structure,
    ``bench/results/loader.md``), which is what lets 4 DataLoader workers feed > 5,000
    structures/s of EAD set 2. ``--codec shuffle-zlib`` keeps a store readable with the Python
    standard library alone."""
    if codec != "auto":
        return {name: codec for name in names}
    return {
        name: "shuffle-zstd" if get(name).dim >= AUTO_COMPRESS_MIN_DIM else "raw" for name in names
    }
