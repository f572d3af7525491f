"""Shared pieces of the input readers: the item type, errors, small parsing helpers."""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "InputError",
    "RawItem",
    "check_columns",
    "default_id_column",
    "invalid_utf8",
    "load_json",
    "open_text",
    "parse_target",
    "printable",
]


class InputError(ValueError):
    """A problem with an input file or the options given for it (reported in one line)."""


@dataclass
class RawItem:
    """One structure as read from its source, before parsing.

    Attributes:
        source: input file (or folder) it came from.
        row: 1-based position in the source, counted in ``row_kind`` units.
        record_id: structure identifier.
        targets: one float per requested target (NaN where missing).
        kind: how the worker turns ``payload`` into arrays: ``"cif-text"``, ``"cif-file"``,
            ``"arrays"`` (dict with ``numbers``, ``positions``, ``cell``, ``pbc``),
            ``"pymatgen-dict"``, or ``"invalid"`` (the reader already knows the item is bad;
            ``payload`` is the reason, and the worker rejects it).
        payload: the unparsed structure.
        row_kind: what ``row`` counts: ``"line"`` (text line where the record starts),
            ``"item"`` (JSON list/DataFrame position), ``"frame"`` (extxyz) or ``"row id"``
            (ASE database).
    """

    source: str
    row: int
    record_id: str
    targets: tuple[float, ...]
    kind: str
    payload: Any
    row_kind: str = "line"

    @property
    def where(self) -> str:
        """Human location, e.g. ``data.csv, line 41 (id mp-1)``."""
        return f"{self.source}, {self.row_kind} {self.row} (id {self.record_id})"


def parse_target(value: Any) -> float:
    """A target value as float; NaN for missing (None, empty, 'nan', non-numeric)."""
    if value is None:
        return math.nan
    if isinstance(value, (list, tuple)):
        return parse_target(value[0]) if len(value) == 1 else math.nan
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def open_text(path: str | os.PathLike, errors: str = "strict"):
    """Open a UTF-8 text file, transparently gunzipping ``*.gz``.

    Args:
        errors: codec error handler; ``"surrogateescape"`` keeps undecodable bytes as lone
            surrogates (U+DC80 … U+DCFF) so a reader can reject just the rows holding them
            (:func:`invalid_utf8`).
    """
    path = str(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors=errors, newline="")
    return open(path, encoding="utf-8", errors=errors, newline="")


def invalid_utf8(fields: Sequence[str], names: Sequence[str], first_line: int) -> str | None:
    """Why a row read with ``errors="surrogateescape"`` is not valid UTF-8, or None if it is.

    Args:
        fields: the row's fields; names: the column names (for the message);
        first_line: 1-based line where the row starts (fields may span lines).

    Returns:
        e.g. ``"not valid UTF-8: byte 0xff on line 12 (column cif)"``.
    """
    line = first_line
    for k, value in enumerate(fields):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            byte = ord(value[err.start]) - 0xDC00
            line += value.count("\n", 0, err.start)
            column = names[k] if k < len(names) else f"{k + 1}"
            return f"not valid UTF-8: byte 0x{byte:02x} on line {line} (column {column})"
        line += value.count("\n")
    return None


def printable(text: str) -> str:
    """``text`` with undecodable bytes (lone surrogates) written as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def load_json(path: str | os.PathLike) -> Any:
    try:
        with open_text(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    except (OSError, EOFError) as err:
        raise InputError(f"{path}: cannot read: {err}") from None


def check_columns(path: str, wanted: Sequence[str], available: Sequence[str], what: str) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise InputError(
            f"{path}: no {what} {', '.join(map(repr, missing))}; "
            f"available: {', '.join(map(str, available))}"
        )


def default_id_column(available: Sequence[str]) -> str | None:
    for name in ("material_id", "id"):
        if name in available:
            return name
    return None
