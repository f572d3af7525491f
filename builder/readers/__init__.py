"""Input adapters: every supported file format becomes a stream of :class:`RawItem`.

A reader only splits its input into items, reads the id and targets (cheap work done in the
main process, streaming where the format allows) and leaves the expensive part, turning the
payload into arrays (e.g. parsing a CIF), to :func:`builder.structure.to_arrays` in the worker
processes. Nothing past the readers touches pymatgen or ASE objects.

Formats (``--format``; detected from the path when omitted):

==============  ===============================  =========================================
format          input                            id / targets
==============  ===============================  =========================================
``csv-cif``     ``*.csv`` / ``*.csv.gz``, one    ``--id-column`` (default ``material_id``
                structure per row, CIF text in   or ``id``), ``--target COL`` columns
                ``--cif-column`` (``cif``)
``cgcnn``       folder of ``<id>.cif`` +         column 1 of ``id_prop.csv``; targets are
                ``id_prop.csv`` (no header)      its later columns, named ``y`` (or ``y0``,
                                                 ``y1``, ... when several)
``extxyz``      ``*.xyz`` / ``*.extxyz`` (ASE)   ``info[id-column]`` or ``<file>:<frame>``;
                                                 targets from ``info``
``ase-db``      ``*.db`` (ASE database)          ``key_value_pairs`` / row attributes
``pymatgen``    ``*.json[.gz]``: a Structure     key, ``id``/``material_id`` field or list
                dict, a list of them, a list of  position; targets from the other fields
                ``{"structure": ..., ...}``, or
                ``{id: Structure dict}``
``matbench``    MatBench / matminer ``json.gz``  the DataFrame index; targets from columns
                (DataFrame ``orient="split"``)
``mdl``         MatDeepLearn JSON list of        ``structure_id``; target ``y`` (``y0``,
                ``{structure_id, positions,      ``y1``, ... when ``y`` has several values)
                cell, atomic_numbers, y}``
``files``       a folder of structure files, or  file name without extension; targets
                one file: ``*.cif``, POSCAR,     optional, from ``--targets-csv`` joined
                CONTCAR, ``*.vasp``, any ASE-    by id (:mod:`builder.readers.files`)
                readable single structure
==============  ===============================  =========================================

JSON formats are loaded whole (JSON has no record boundaries to stream on); CSV, CGCNN folders,
extxyz and ASE databases stream.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from fingerprint_pretrain.builder.readers import ase_formats, csv_cif, files, json_formats
from fingerprint_pretrain.builder.readers.common import InputError, RawItem, open_text, parse_target

__all__ = [
    "FORMATS",
    "InputError",
    "RawItem",
    "detect_format",
    "expand_inputs",
    "open_input",
    "parse_target",
]

# format name -> opener(path, targets, id_column, cif_column) -> (target_names, items, total)
FORMATS: dict[str, Callable] = {
    "csv-cif": csv_cif.open_csv_cif,
    "cgcnn": csv_cif.open_cgcnn,
    "extxyz": ase_formats.open_extxyz,
    "ase-db": ase_formats.open_ase_db,
    "pymatgen": json_formats.open_pymatgen_json,
    "matbench": json_formats.open_matbench,
    "mdl": json_formats.open_mdl,
    "files": files.open_structure_files,
}


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Input paths with glob patterns (``'cifs/*.cif'``, quoted so the shell left them)
    expanded in sorted order; a path that exists is taken as it is.

    Raises:
        InputError: a pattern that matches nothing.
    """
    import glob

    out: list[str] = []
    for item in map(str, inputs):
        if not os.path.exists(item) and glob.has_magic(item):
            found = sorted(glob.glob(item))
            if not found:
                raise InputError(f"{item}: no file matches this pattern")
            out += found
        else:
            out.append(item)
    return out


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format of ``path`` from its name and, for JSON, its top-level layout."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        return "cgcnn" if (p / "id_prop.csv").is_file() else "files"
    if files.is_structure_file(p):
        return "files"
    if name.endswith((".csv", ".csv.gz")):
        return "csv-cif"
    if name.endswith((".xyz", ".extxyz", ".xyz.gz", ".extxyz.gz")):
        return "extxyz"
    if name.endswith(".db"):
        return "ase-db"
    if name.endswith((".json", ".json.gz")):
        head = _json_head(p)
        if head.startswith("{") and '"columns"' in head and '"data"' in head:
            return "matbench"
        if head.startswith("[") and '"atomic_numbers"' in head and '"positions"' in head:
            return "mdl"
        return "pymatgen"
    raise InputError(
        f"{path}: cannot tell the format from the name; pass --format ({', '.join(FORMATS)})"
    )


def _json_head(path: Path, size: int = 65536) -> str:
    with open_text(path) as fh:
        return fh.read(size).lstrip()


def open_input(
    path: str | os.PathLike,
    fmt: str | None,
    targets: Sequence[str],
    id_column: str | None,
    cif_column: str = "cif",
    targets_csv: str | None = None,
) -> tuple[str, list[str], Iterator[RawItem], int | None]:
    """Open one input (``targets_csv``: the targets of a ``files`` input, joined by id).

    Returns:
        ``(format, target_names, items, total)``: the format used, the target names (the
        requested ones, or the format's natural target when none was requested), a lazy
        iterator and the number of items (None when it cannot be known cheaply).

    Raises:
        InputError: unknown format, missing file, or a requested column that does not exist
            (the message lists the columns that do).
    """
    if not Path(path).exists():
        raise InputError(f"{path}: no such file or folder")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    opener = FORMATS[fmt]
    if fmt == "files":
        return (fmt, *opener(str(path), list(targets), id_column, cif_column, targets_csv))
    if targets_csv:
        raise InputError(
            f"{path}: --targets-csv is for folders or files of structures (format 'files'); "
            f"{fmt} inputs carry their targets (--target COLUMN)"
        )
    return (fmt, *opener(str(path), list(targets), id_column, cif_column))
