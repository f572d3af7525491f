"""Turn a reader's payload into plain arrays, and check them.

This is the only place (with the readers) that touches pymatgen objects: a CIF or a
``Structure`` dict becomes ``(z, pos, cell, pbc)`` here, in the worker processes.
"""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stderr
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Rejected",
    "StructureArrays",
    "check_structure",
    "check_targets",
    "element_label",
    "to_arrays",
]

MIN_DISTANCE = 0.5  # Å; closer pairs (periodic images included) are overlapping atoms


class Rejected(Exception):
    """A structure the store will not hold; ``str(exc)`` is the reason written to
    ``rejected.csv``."""


@dataclass
class StructureArrays:
    """z: (N,) uint8; pos: (N, 3) float64 Å; cell: (3, 3) float64 Å rows; pbc: (3,) bool."""

    z: np.ndarray
    pos: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray


def _from_pymatgen(structure) -> StructureArrays:
    if not structure.is_ordered:
        raise Rejected("disordered structure (partial occupancies)")
    try:
        z = np.array([site.specie.Z for site in structure], dtype=np.int64)
    except AttributeError as err:  # dummy species have no Z
        raise Rejected(f"unknown element: {err}") from None
    return StructureArrays(
        z=z,
        pos=np.array(structure.cart_coords, dtype=np.float64).reshape(-1, 3),
        cell=np.array(structure.lattice.matrix, dtype=np.float64),
        pbc=np.array(structure.lattice.pbc, dtype=bool),
    )


def _parse_cif(text: str) -> StructureArrays:
    from pymatgen.io.cif import CifParser

    # pymatgen reports CIF problems as warnings and prints to stderr; gather them so the
    # rejection reason carries the message and the build output stays clean.
    with warnings.catch_warnings(record=True) as caught, redirect_stderr(io.StringIO()):
        warnings.simplefilter("always")
        try:
            structures = CifParser.from_str(text).parse_structures(primitive=False)
        except Exception as err:
            detail = "; ".join(str(w.message) for w in caught[:2])
            raise Rejected(
                f"unparsable CIF: {type(err).__name__}: {err}" + (f" ({detail})" if detail else "")
            ) from None
    if not structures:
        raise Rejected("unparsable CIF: no structure in the data block")
    return _from_pymatgen(structures[0])


def _read_with_ase(path: str) -> StructureArrays:
    """One structure file that is not a CIF (POSCAR, ``*.vasp``, ``*.xsf``, ...), read by ASE
    (format guessed from the name; POSCAR/CONTCAR by name). A file of several frames is
    refused: one file, one structure."""
    import ase.io

    try:
        frames = ase.io.read(path, index=":")
    except Exception as err:  # ASE raises many kinds for unreadable files
        raise Rejected(f"unreadable structure file: {type(err).__name__}: {err}") from None
    if len(frames) != 1:
        raise Rejected(f"{len(frames)} structures in one file (give one per file, or extxyz)")
    atoms = frames[0]
    return StructureArrays(
        z=np.asarray(atoms.numbers, dtype=np.int64),
        pos=np.asarray(atoms.positions, dtype=np.float64).reshape(-1, 3),
        cell=np.asarray(atoms.cell.array, dtype=np.float64).reshape(3, 3),
        pbc=np.asarray(atoms.pbc, dtype=bool).reshape(3),
    )


def to_arrays(kind: str, payload: Any) -> StructureArrays:
    """Payload of a :class:`~fingerprint_pretrain.builder.readers.RawItem` -> arrays.

    Raises:
        Rejected: the payload cannot be turned into a structure.
    """
    if kind == "invalid":  # the reader found the problem (e.g. bytes that are not UTF-8)
        raise Rejected(str(payload))
    if kind == "cif-text":
        return _parse_cif(payload)
    if kind == "cif-file":
        try:
            with open(payload, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError as err:
            raise Rejected(f"cannot read CIF file: {err}") from None
        return _parse_cif(text)
    if kind == "ase-file":
        return _read_with_ase(payload)
    if kind == "pymatgen-dict":
        from pymatgen.core import Structure

        try:
            structure = Structure.from_dict(payload)
        except Exception as err:
            raise Rejected(f"invalid Structure dict: {type(err).__name__}: {err}") from None
        return _from_pymatgen(structure)
    if kind == "arrays":
        try:
            z = np.asarray(payload["numbers"], dtype=np.float64).reshape(-1)
            pos = np.asarray(payload["positions"], dtype=np.float64).reshape(-1, 3)
            cell = np.asarray(payload["cell"], dtype=np.float64).reshape(3, 3)
            pbc = np.asarray(payload.get("pbc", (True, True, True)), dtype=bool).reshape(3)
        except (KeyError, TypeError, ValueError) as err:
            raise Rejected(f"malformed structure arrays: {type(err).__name__}: {err}") from None
        if np.any(z != np.round(z)):
            raise Rejected("non-integer atomic numbers")
        if len(z) != len(pos):
            raise Rejected(f"{len(z)} atomic numbers but {len(pos)} positions")
        return StructureArrays(z.astype(np.int64), pos, cell, pbc)
    raise ValueError(f"unknown payload kind {kind!r}")


def element_label(z: int) -> str:
    """``"Am (Z=95)"``; just ``"Z=200"`` for a number no element has."""
    from ase.data import chemical_symbols

    z = int(z)
    return f"{chemical_symbols[z]} (Z={z})" if 0 < z < len(chemical_symbols) else f"Z={z}"


def check_targets(targets, names=()) -> None:
    """Reject infinite target values (NaN means missing and is handled by the caller).

    Args:
        targets: one float per target.
        names: the target names, for the message (positions are used when absent).

    Raises:
        Rejected: ``"infinite target band_gap (inf)"``.
    """
    values = np.asarray(targets, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(np.isinf(values))
    if len(bad):
        k = int(bad[0])
        name = names[k] if k < len(names) else f"number {k + 1} of {len(values)}"
        raise Rejected(f"infinite target {name} ({values[k]})")


def check_structure(s: StructureArrays) -> StructureArrays:
    """Reject what no store should hold; returns the arrays with ``z`` as uint8.

    Raises:
        Rejected: empty structure, unknown element, non-finite numbers, degenerate periodic cell.
    """
    if len(s.z) == 0:
        raise Rejected("empty structure (no atoms)")
    if s.z.min() < 1 or s.z.max() > 118:
        bad = s.z[(s.z < 1) | (s.z > 118)][0]
        raise Rejected(f"unknown element: atomic number {bad}")
    if not np.isfinite(s.pos).all():
        raise Rejected("non-finite coordinates")
    if not np.isfinite(s.cell).all():
        raise Rejected("non-finite cell")
    if s.pbc.any():
        periodic = s.cell[s.pbc]
        gram = periodic @ periodic.T
        if np.linalg.det(gram) < 1e-6:
            raise Rejected("degenerate cell (periodic lattice vectors are zero or dependent)")
    return StructureArrays(s.z.astype(np.uint8), s.pos, s.cell, s.pbc)
