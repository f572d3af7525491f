"""Inputs read through ASE: extended XYZ files and ASE databases (both stream)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fingerprint_pretrain.builder.readers.common import (
    InputError,
    RawItem,
    check_columns,
    parse_target,
)


def _atoms_payload(atoms) -> dict[str, Any]:
    return {
        "numbers": atoms.get_atomic_numbers(),
        "positions": atoms.get_positions(),
        "cell": atoms.get_cell().array,
        "pbc": tuple(bool(p) for p in atoms.get_pbc()),
    }


def frame_values(atoms) -> dict[str, Any]:
    """The scalar values of a frame a target can come from: the calculator's results
    (``energy``, ``free_energy``, ...: ASE moves ``energy=`` of an extxyz comment line into a
    SinglePointCalculator) and ``info`` (the other key=value pairs; wins on a name clash)."""
    values: dict[str, Any] = {}
    calc = getattr(atoms, "calc", None)
    for key, value in (getattr(calc, "results", None) or {}).items():
        if getattr(value, "ndim", 0) == 0 and not isinstance(value, (str, bytes)):
            values[key] = value
    values.update(atoms.info)
    return values


def open_extxyz(
    path: str, targets: list[str], id_column: str | None, cif_column: str
) -> tuple[list[str], Iterator[RawItem]]:
    """Extended XYZ (multi-frame). Targets and ids come from each frame's comment line: its
    ``info`` key=value pairs and the calculator results ASE makes of ``energy=``,
    ``free_energy=`` ... (:func:`frame_values`); id default: ``material_id`` or ``id`` in
    ``info``, else ``<file>:<frame>``."""
    import ase.io

    stem = Path(path).name
    try:
        first = next(ase.io.iread(path, index=":", format="extxyz"), None)
    except Exception as err:  # ASE raises many types for malformed files
        raise InputError(f"{path}: cannot read extxyz: {err}") from None
    if first is None:
        raise InputError(f"{path}: no frames")
    check_columns(path, targets, sorted(frame_values(first)), "info/calculator key(s) for target")

    def items() -> Iterator[RawItem]:
        frames = ase.io.iread(path, index=":", format="extxyz")
        for k in itertools.count():
            try:
                atoms = next(frames)
            except StopIteration:
                return
            except Exception as err:
                raise InputError(f"{path}, frame {k + 1}: cannot parse: {err}") from None
            info = atoms.info
            values = frame_values(atoms)
            key = id_column or next((c for c in ("material_id", "id") if c in info), None)
            yield RawItem(
                source=path,
                row=k + 1,
                row_kind="frame",
                record_id=str(info[key]) if key in info else f"{stem}:{k + 1}",
                targets=tuple(parse_target(values.get(t)) for t in targets),
                kind="arrays",
                payload=_atoms_payload(atoms),
            )

    return targets, items(), _count_frames(path)


def _count_frames(path: str) -> int | None:
    """Frames in an extxyz file by skipping atom lines (no parsing); None if unsure."""
    from fingerprint_pretrain.builder.readers.common import open_text

    count = 0
    with open_text(path) as fh:
        for line in fh:
            text = line.strip()
            if not text:
                continue
            try:
                n_atoms = int(text)
            except ValueError:
                return None
            for _ in range(n_atoms + 1):
                if not fh.readline():
                    return None
            count += 1
    return count


def open_ase_db(
    path: str, targets: list[str], id_column: str | None, cif_column: str
) -> tuple[list[str], Iterator[RawItem]]:
    """ASE database (``*.db``). Targets from each row's key-value pairs or attributes
    (``energy``, ...); id default: ``material_id`` or ``uid`` key, else the row id."""
    import ase.db

    try:
        db = ase.db.connect(path)
        first = next(db.select(limit=1), None)
    except Exception as err:
        raise InputError(f"{path}: cannot open ASE database: {err}") from None
    if first is None:
        raise InputError(f"{path}: database has no rows")
    available = sorted(set(first.key_value_pairs) | {k for k in first if not k.startswith("_")})
    check_columns(path, targets, available, "key(s) for target")

    def items() -> Iterator[RawItem]:
        for row in ase.db.connect(path).select():
            kv = row.key_value_pairs
            if id_column:
                record_id = str(row.get(id_column))
            else:
                key = next((c for c in ("material_id", "uid") if c in kv), None)
                record_id = str(kv[key]) if key else str(row.id)
            values = tuple(
                parse_target(row.get(t)) if row.get(t) is not None else math.nan for t in targets
            )
            yield RawItem(
                source=path,
                row=int(row.id),
                row_kind="row id",
                record_id=record_id,
                targets=values,
                kind="arrays",
                payload=_atoms_payload(row.toatoms()),
            )

    return targets, items(), db.count()
