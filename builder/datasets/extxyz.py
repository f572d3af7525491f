"""Gzipped extended XYZ: the pickle-free build input every conversion of a downloaded source
writes (:mod:`builder.datasets.prepare`, :mod:`builder.datasets.mpf`)."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

__all__ = ["Frame", "write_extxyz"]

# (material id, atomic numbers (N,), Cartesian positions (N, 3) Å, cell rows (3, 3) Å, pbc,
#  info: id and target values)
Frame = tuple[np.ndarray, np.ndarray, np.ndarray, tuple[bool, bool, bool], dict]


def write_extxyz(frames: Iterable[Frame], out: Path, progress: bool = True) -> int:
    """Write frames to a gzipped extxyz file atomically (``out.tmp`` then rename).

    Returns the number of frames written.
    """
    import ase
    import ase.io
    from tqdm import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    count = 0
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for numbers, positions, cell, pbc, info in tqdm(
            frames, desc=f"write {out.name}", unit="struct", disable=not progress
        ):
            atoms = ase.Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
            atoms.info.update(info)
            ase.io.write(fh, atoms, format="extxyz")
            count += 1
    os.replace(tmp, out)
    return count
