"""Sizes of stores on disk, and byte counts for people (``fp-build info``, ``make-datasets``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["disk_bytes", "human_bytes"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: float | None) -> str:
    """``n`` bytes in binary units, e.g. ``"512 B"``, ``"1.5 KiB"``, ``"3.2 GiB"``; TiB is the
    largest unit; ``None`` (size unknown) is ``"-"``."""
    if n is None:
        return "-"
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def disk_bytes(path: Path) -> int:
    """Bytes actually allocated on disk by the file ``path`` or by every file below the folder
    ``path`` (LMDB files are sparse: their apparent size overstates them)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(f.stat().st_blocks * 512 for f in files)
