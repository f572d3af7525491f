"""CSV inputs holding CIF text (the CDVAE/MatBench-CSV layout) and CGCNN folders."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path

from fingerprint_pretrain.builder.readers.common import (
    InputError,
    RawItem,
    check_columns,
    default_id_column,
    invalid_utf8,
    open_text,
    parse_target,
    printable,
)

# A CIF in one CSV field easily exceeds csv's default 128 kB field limit.
csv.field_size_limit(sys.maxsize)


def _header(path: str) -> list[str]:
    try:
        with open_text(path, errors="surrogateescape") as fh:
            header = next(csv.reader(fh))
    except StopIteration:
        raise InputError(f"{path}: empty file (no header row)") from None
    except (OSError, EOFError, csv.Error) as err:
        raise InputError(f"{path}: cannot read CSV header: {err}") from None
    bad = invalid_utf8(header, [str(k + 1) for k in range(len(header))], 1)
    if bad is not None:
        raise InputError(f"{path}: header is {bad}")
    return header


def open_csv_cif(
    path: str, targets: list[str], id_column: str | None, cif_column: str
) -> tuple[list[str], Iterator[RawItem]]:
    """CSV (optionally gzipped) with a header; one structure per row as CIF text.

    ``row`` of each item is the 1-based line number where the record starts (the header is
    line 1), so an error points at the line to open in an editor. A row holding bytes that are
    not UTF-8 becomes an ``"invalid"`` item (rejected with the byte and its line); the other
    rows are read as usual.
    """
    header = _header(path)
    check_columns(path, [cif_column], header, "CIF column (--cif-column)")
    check_columns(path, targets, header, "target column(s)")
    if id_column is not None:
        check_columns(path, [id_column], header, "id column (--id-column)")
    id_col = id_column or default_id_column(header)
    cif_i = header.index(cif_column)
    id_i = header.index(id_col) if id_col else None
    target_i = [header.index(t) for t in targets]
    stem = Path(path).name

    def items() -> Iterator[RawItem]:
        with open_text(path, errors="surrogateescape") as fh:
            reader = csv.reader(fh)
            next(reader)
            line = reader.line_num + 1
            for row in reader:
                bad = invalid_utf8(row, header, line)
                if len(row) != len(header) and bad is None:
                    raise InputError(
                        f"{path}, line {line}: {len(row)} fields, header has {len(header)}"
                    )
                record_id = row[id_i] if id_i is not None and id_i < len(row) else None
                record_id = printable(record_id) if record_id is not None else f"{stem}:{line}"
                yield RawItem(
                    source=path,
                    row=line,
                    record_id=record_id,
                    targets=tuple(
                        parse_target(row[k]) if bad is None else float("nan") for k in target_i
                    ),
                    kind="cif-text" if bad is None else "invalid",
                    payload=row[cif_i] if bad is None else bad,
                )
                line = reader.line_num + 1

    return targets, items(), _count_rows(path)


def _count_rows(path: str) -> int:
    """Records in a CSV file (a quick pass; CIF fields span many lines)."""
    with open_text(path, errors="surrogateescape") as fh:
        return sum(1 for _ in csv.reader(fh)) - 1


def open_cgcnn(
    path: str, targets: list[str], id_column: str | None, cif_column: str
) -> tuple[list[str], Iterator[RawItem]]:
    """CGCNN folder: ``id_prop.csv`` (no header: id, then one or more property columns) and
    ``<id>.cif`` per structure. Properties are named ``y`` (one column) or ``y0, y1, ...``."""
    folder = Path(path)
    id_prop = folder / "id_prop.csv"
    with open_text(id_prop, errors="surrogateescape") as fh:
        first = next(csv.reader(fh), None)
    if not first:
        raise InputError(f"{id_prop}: empty file")
    n_props = len(first) - 1
    names = ["y"] if n_props == 1 else [f"y{k}" for k in range(n_props)]
    wanted = targets or names
    check_columns(str(id_prop), wanted, names, "target(s)")
    target_i = [1 + names.index(t) for t in wanted]

    def items() -> Iterator[RawItem]:
        with open_text(id_prop, errors="surrogateescape") as fh:
            for line, row in enumerate(csv.reader(fh), start=1):
                if not row:
                    continue
                record_id = row[0].strip()
                bad = invalid_utf8(row, ["id", *names], line)
                yield RawItem(
                    source=str(id_prop),
                    row=line,
                    record_id=printable(record_id),
                    targets=tuple(
                        parse_target(row[k]) if k < len(row) and bad is None else float("nan")
                        for k in target_i
                    ),
                    kind="cif-file" if bad is None else "invalid",
                    payload=str(folder / f"{record_id}.cif") if bad is None else bad,
                )

    with open_text(id_prop, errors="surrogateescape") as fh:
        total = sum(1 for row in csv.reader(fh) if row)
    return wanted, items(), total
