"""JSON inputs: pymatgen ``Structure`` dicts, MatBench/matminer DataFrames, MatDeepLearn lists."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fingerprint_pretrain.builder.readers.common import (
    InputError,
    RawItem,
    check_columns,
    default_id_column,
    load_json,
    parse_target,
)


def _is_structure_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and "lattice" in obj and "sites" in obj


def open_pymatgen_json(
    path: str, targets: list[str], id_column: str | None, cif_column: str
) -> tuple[list[str], Iterator[RawItem]]:
    """pymatgen ``Structure.as_dict()`` JSON, in any of these layouts:

    - one Structure dict (id = file name);
    - a list of Structure dicts (id = ``<file>:<position>``);
    - a list of records ``{"structure": <Structure dict>, <id/target fields>...}``;
    - a dict ``{id: <Structure dict>}``.
    """
    data = load_json(path)
    stem = Path(path).name
    entries: list[tuple[str, dict, dict]] = []  # (id, structure dict, other fields)
    if _is_structure_dict(data):
        entries.append((stem, data, {}))
    elif isinstance(data, dict) and data and all(_is_structure_dict(v) for v in data.values()):
        entries.extend((str(k), v, {}) for k, v in data.items())
    elif isinstance(data, list):
        fields = set()
        for k, obj in enumerate(data):
            if _is_structure_dict(obj):
                entries.append((f"{stem}:{k + 1}", obj, {}))
            elif isinstance(obj, dict) and _is_structure_dict(obj.get("structure")):
                fields.update(obj)
                entries.append(("", obj["structure"], obj))
            else:
                raise InputError(
                    f"{path}, item {k + 1}: neither a Structure dict nor a record with a "
                    f"'structure' field"
                )
        available = sorted(fields - {"structure"})
        if entries and entries[0][2]:
            if id_column is not None:
                check_columns(path, [id_column], available, "id field (--id-column)")
            id_col = id_column or default_id_column(available)
            entries = [
                (str(o[id_col]) if id_col and id_col in o else f"{stem}:{k + 1}", s, o)
                for k, (_, s, o) in enumerate(entries)
            ]
    else:
        raise InputError(f"{path}: not a pymatgen Structure JSON layout")
    if targets:
        available = sorted({key for _, _, other in entries for key in other} - {"structure"})
        check_columns(path, targets, available, "target field(s)")

    def items() -> Iterator[RawItem]:
        for k, (record_id, structure, other) in enumerate(entries):
            yield RawItem(
                source=path,
                row=k + 1,
                row_kind="item",
                record_id=record_id,
                targets=tuple(parse_target(other.get(t)) for t in targets),
                kind="pymatgen-dict",
                payload=structure,
            )

    return targets, items(), len(entries)


def open_matbench(
    path: str, targets: list[str], id_column: str | None, cif_column: str
) -> tuple[list[str], Iterator[RawItem]]:
    """MatBench / matminer dataset: gzipped JSON of a DataFrame in ``orient="split"`` form,
    ``{"index": [...], "columns": ["structure", <target>], "data": [[<Structure dict>, v]...]}``.
    Ids are the index values (``mb-jdft2d-001`` ...); default targets: every column but
    ``structure``."""
    data = load_json(path)
    if not isinstance(data, dict) or not {"columns", "data"} <= set(data):
        raise InputError(f"{path}: not a DataFrame 'split' JSON (needs 'columns' and 'data')")
    columns = list(data["columns"])
    check_columns(path, ["structure"], columns, "column")
    wanted = targets or [c for c in columns if c != "structure"]
    check_columns(path, wanted, columns, "target column(s)")
    s_i = columns.index("structure")
    t_i = [columns.index(t) for t in wanted]
    index = data.get("index") or list(range(len(data["data"])))

    def items() -> Iterator[RawItem]:
        for k, (row_id, row) in enumerate(zip(index, data["data"])):
            yield RawItem(
                source=path,
                row=k + 1,
                row_kind="item",
                record_id=str(row_id),
                targets=tuple(parse_target(row[i]) for i in t_i),
                kind="pymatgen-dict",
                payload=row[s_i],
            )

    return wanted, items(), len(data["data"])


def open_mdl(
    path: str, targets: list[str], id_column: str | None, cif_column: str
) -> tuple[list[str], Iterator[RawItem]]:
    """MatDeepLearn JSON: list of ``{structure_id, positions (N,3) Å, cell (3,3) Å,
    atomic_numbers (N,), y: [values]}``; periodic in all three directions. The target is
    ``y`` (or ``y0``, ``y1``, ... when ``y`` holds several values)."""
    data = load_json(path)
    if not isinstance(data, list) or (data and not isinstance(data[0], dict)):
        raise InputError(f"{path}: expected a JSON list of MatDeepLearn records")
    n_y = len(data[0].get("y", [])) if data else 1
    names = ["y"] if n_y == 1 else [f"y{k}" for k in range(n_y)]
    wanted = targets or names
    check_columns(path, wanted, names, "target(s)")
    t_i = [names.index(t) for t in wanted]
    id_col = id_column or "structure_id"

    def items() -> Iterator[RawItem]:
        for k, obj in enumerate(data):
            y = obj.get("y")
            if not isinstance(y, (list, tuple)):
                y = [y]
            yield RawItem(
                source=path,
                row=k + 1,
                row_kind="item",
                record_id=str(obj.get(id_col, k)),
                targets=tuple(parse_target(y[i]) if i < len(y) else math.nan for i in t_i),
                kind="arrays",
                payload={
                    "numbers": obj.get("atomic_numbers"),
                    "positions": obj.get("positions"),
                    "cell": obj.get("cell"),
                    "pbc": (True, True, True),
                },
            )

    return wanted, items(), len(data)
