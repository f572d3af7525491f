"""Plain structure files: one structure per file (CIF, POSCAR/CONTCAR, any ASE-readable file).

The input is a folder (every structure file in it, sorted by name; subfolders are not entered)
or a single file; ``fp-build build a.cif b.cif 'cifs/*.cif'`` passes several. The id of a
structure is its file name without the extension (``POSCAR``-style names keep their full name,
e.g. ``POSCAR_mp-1``); targets, optional, come from a CSV joined by id (``--targets-csv``):
a header row, an id column (``--id-column``, default ``material_id`` or ``id``) and the target
columns named with ``--target``. A structure whose id is not in that CSV gets NaN targets (kept
only with ``--allow-missing-targets``; predictions need no targets).

CIFs are parsed by pymatgen (as everywhere in the builder); other files by ASE
(``ase.io.read``, format guessed from the name: POSCAR, CONTCAR, ``*.vasp``, ``*.xsf``,
``*.cell``, ...), in the worker processes.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

from fingerprint_pretrain.builder.readers.common import (
    InputError,
    RawItem,
    check_columns,
    default_id_column,
    open_text,
    parse_target,
)

__all__ = ["STRUCTURE_SUFFIXES", "is_structure_file", "open_structure_files", "structure_id"]

#: File name endings taken as one structure each (lower case); POSCAR/CONTCAR by name.
STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".xsf", ".cell", ".gen", ".res", ".pdb")
_VASP_NAMES = ("poscar", "contcar")


def is_structure_file(path: Path) -> bool:
    """Whether ``path`` looks like a single-structure file this reader takes."""
    name = path.name.lower()
    return name.endswith(STRUCTURE_SUFFIXES) or name.startswith(_VASP_NAMES)


def structure_id(path: Path) -> str:
    """The record id of a structure file: its name without the extension (VASP names whole)."""
    if path.name.lower().startswith(_VASP_NAMES):
        return path.name
    return path.stem


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and is_structure_file(p))
        if not found:
            raise InputError(
                f"{path}: no structure files in this folder (looked for "
                f"{', '.join(STRUCTURE_SUFFIXES)}, POSCAR*, CONTCAR*; a CGCNN folder needs "
                f"id_prop.csv)"
            )
        return found
    return [path]


def read_targets_csv(
    path: str, targets: list[str], id_column: str | None
) -> dict[str, tuple[float, ...]]:
    """``{id: target values}`` from a CSV with a header (ids must be unique)."""
    try:
        with open_text(path) as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise InputError(f"{path}: empty file (no header row)")
            if id_column is not None:
                check_columns(path, [id_column], header, "id column (--id-column)")
            id_col = id_column or default_id_column(header) or header[0]
            check_columns(path, targets, header, "target column(s)")
            id_i, t_i = header.index(id_col), [header.index(t) for t in targets]
            table: dict[str, tuple[float, ...]] = {}
            for row in reader:
                if not row:
                    continue
                key = row[id_i].strip()
                if key in table:
                    raise InputError(f"{path}, line {reader.line_num}: id {key!r} repeated")
                table[key] = tuple(parse_target(row[k]) if k < len(row) else math.nan for k in t_i)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read targets CSV: {err}") from None
    return table


def open_structure_files(
    path: str,
    targets: list[str],
    id_column: str | None,
    cif_column: str,
    targets_csv: str | None = None,
) -> tuple[list[str], Iterator[RawItem], int]:
    """A folder of structure files, or one file (see the module docstring).

    Raises:
        InputError: an empty folder, targets requested without ``targets_csv``, or a targets
            CSV that lacks a requested column.
    """
    files = _files(Path(path))
    if targets and not targets_csv:
        raise InputError(
            f"{path}: structure files carry no targets; give them in a CSV with --targets-csv "
            f"(id column + {', '.join(targets)})"
        )
    table = read_targets_csv(targets_csv, targets, id_column) if targets_csv else {}
    missing = tuple(math.nan for _ in targets)

    def items() -> Iterator[RawItem]:
        for k, file in enumerate(files, start=1):
            record_id = structure_id(file)
            yield RawItem(
                source=str(file),
                row=k,
                record_id=record_id,
                targets=table.get(record_id, missing),
                kind="cif-file" if file.name.lower().endswith(".cif") else "ase-file",
                payload=str(file),
                row_kind="file",
            )

    return targets, items(), len(files)
