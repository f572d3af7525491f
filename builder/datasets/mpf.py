"""MPF.2021.2.8 (the M3GNet training set, the paper's "MP Relaxed" pre-training structures):
pickles in, a pickle-free extxyz file out.

The data are published only as pickles (``block_0.p``, ``block_1.p`` on figshare, doi
10.6084/m9.figshare.19470599): dicts keyed by Materials Project id, each value a dict of lists
over the relaxation trajectory, ``structure`` (pymatgen ``Structure``), ``energy``, ``force``,
``stress``, ``id``. The relaxed structure is the trajectory's last frame.

Unpickling runs code named by the file, so a pickle is only ever read here, in the download
step, with :class:`RestrictedUnpickler`: an allowlist of the classes such a file legitimately
holds (pymatgen's structure classes, NumPy's array reconstruction, plain containers); any other
global, ``os.system`` included, stops the load with :class:`UnsafePickleError` before it is
called. The result is written to gzipped extxyz (:func:`convert_mpf`) that the builder reads;
no pickle is ever written, and none reaches a store.
"""

from __future__ import annotations

import importlib
import math

# The only pickle import in builder/: MPF is published solely as pickles. Used to *load*, and
# only through RestrictedUnpickler below; nothing here serialises with pickle.
import pickle
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from fingerprint_pretrain.builder.build import BuildError
from fingerprint_pretrain.builder.datasets.extxyz import write_extxyz

__all__ = ["ALLOWED_GLOBALS", "RestrictedUnpickler", "UnsafePickleError", "convert_mpf", "load"]

#: (module, name) pairs a pickle may reference. NumPy's helpers under both their NumPy 1
#: (``numpy.core``) and NumPy 2 (``numpy._core``) module names; pymatgen's structure classes
#: under their current paths and the aliases older pymatgen versions pickled.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [
        ("builtins", name)
        for name in ("dict", "list", "tuple", "set", "frozenset", "complex", "bytearray")
    ]
    + [
        ("collections", "OrderedDict"),
        ("copyreg", "_reconstructor"),  # protocol 0/1 objects; its classes pass this check too
        ("_codecs", "encode"),  # protocol 2 bytes (ndarray buffers) as latin-1 text
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    ]
    + [
        (f"numpy.{core}.{module}", name)
        for core in ("core", "_core")
        for module, name in (
            ("multiarray", "_reconstruct"),
            ("multiarray", "scalar"),
            ("numeric", "_frombuffer"),
        )
    ]
    + [
        ("pymatgen.core.structure", "Structure"),
        ("pymatgen.core.structure", "IStructure"),
        ("pymatgen.core.lattice", "Lattice"),
        ("pymatgen.core.sites", "Site"),
        ("pymatgen.core.sites", "PeriodicSite"),
        ("pymatgen.core.composition", "Composition"),
        ("pymatgen.core.periodic_table", "Element"),
        ("pymatgen.core.periodic_table", "Species"),
        ("pymatgen.core.periodic_table", "Specie"),
        ("pymatgen.core.periodic_table", "DummySpecies"),
        ("pymatgen.core.periodic_table", "DummySpecie"),
    ]
)


class UnsafePickleError(pickle.UnpicklingError, BuildError):
    """A pickle that references something outside :data:`ALLOWED_GLOBALS` (never loaded)."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and refuses everything else.

    Args:
        file: binary file object.
        source: name used in error messages.
    """

    def __init__(self, file, source: str = "pickle"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source}: refusing to unpickle {module}.{name}: an MPF file holds only "
                f"pymatgen structures, NumPy arrays and plain containers, so this file is not "
                f"what the registry describes (or is malicious); it was not used"
            )
        if module.startswith("numpy.core."):  # NumPy 1 pickles under NumPy 2: same helpers
            module = "numpy._core." + module.removeprefix("numpy.core.")
            try:
                importlib.import_module(module)
            except ImportError:  # NumPy 1: the old name is the real one
                module = "numpy.core." + module.removeprefix("numpy._core.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return getattr(importlib.import_module(module), name)

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: persistent ids are not allowed")


def load(path: str | Path):
    """Load one pickle file with :class:`RestrictedUnpickler`."""
    with open(path, "rb") as fh:
        return RestrictedUnpickler(fh, source=str(path)).load()


def structure_arrays(structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(atomic numbers (N,), Cartesian positions (N, 3) Å, cell rows (3, 3) Å) of a pymatgen
    structure, through attributes that every pymatgen version since 2019 has (a structure
    pickled by an older pymatgen keeps its old state)."""
    matrix = np.asarray(structure.lattice.matrix, dtype=np.float64).reshape(3, 3)
    frac = np.array([site.frac_coords for site in structure.sites], dtype=np.float64)
    numbers = np.array([site.specie.Z for site in structure.sites], dtype=np.int64)
    return numbers, frac.reshape(-1, 3) @ matrix, matrix


def _frames(blocks: list[Path], counts: dict, log) -> Iterator:
    seen: set[str] = set()
    for block in blocks:
        data = load(block)
        if not isinstance(data, dict):
            raise BuildError(f"{block}: expected a dict keyed by mp-id, got {type(data).__name__}")
        for material_id, entry in data.items():
            if not isinstance(entry, dict) or "structure" not in entry:
                keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
                raise BuildError(
                    f"{block}, {material_id}: expected lists 'structure', 'energy', ...; "
                    f"found {keys}"
                )
            if material_id in seen:
                counts["duplicates"] += 1
                continue
            seen.add(material_id)
            structures = entry["structure"]
            energies = entry.get("energy")
            energies = [] if energies is None else energies
            try:
                numbers, positions, cell = structure_arrays(structures[-1])
            except Exception as err:  # a disordered site, a state this pymatgen cannot read
                counts["skipped"] += 1
                if counts["skipped"] <= 5:
                    log(f"  skipped {material_id}: {type(err).__name__}: {err}")
                continue
            energy = float(energies[-1]) if len(energies) == len(structures) else math.nan
            counts["frames"] += len(structures)
            yield (
                numbers,
                positions,
                cell,
                (True, True, True),
                {"material_id": str(material_id), "mpf_energy": energy},
            )
        del data


def convert_mpf(
    blocks: list[Path], out: Path, progress: bool = True, log: Callable[[str], None] = print
) -> dict:
    """Write the last frame of every trajectory in ``blocks`` to ``out`` (gzipped extxyz, info
    ``material_id`` and ``mpf_energy``, eV: MPF's energy of that frame). An id present in
    several blocks is kept once (its first occurrence).

    Returns:
        counts for the sidecar: ``records``, ``frames`` (trajectory frames read),
        ``duplicates``, ``skipped``.
    """
    counts = {"frames": 0, "duplicates": 0, "skipped": 0}
    written = write_extxyz(_frames(list(blocks), counts, log), out, progress)
    log(
        f"  MPF: {written:,} relaxed structures from {counts['frames']:,} frames "
        f"({counts['duplicates']} duplicate ids, {counts['skipped']} skipped); "
        f"the paper's set has 62,783"
    )
    return {"records": written, **counts}
