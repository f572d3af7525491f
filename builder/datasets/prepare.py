"""Conversions of downloaded sources into pickle-free build inputs (gzipped extended XYZ).

A source whose files are not directly a builder input (:attr:`Source.prepare`) is converted
once into ``$FP_DATA/prepared/<store>.extxyz.gz`` with a sidecar ``<store>.extxyz.gz.json``
naming the inputs (sha256) it came from; a later run reuses it when the inputs are unchanged.

- ``mpf``: the MPF.2021.2.8 pickles (:mod:`builder.datasets.mpf`, restricted unpickler);
- ``c2db-ase-db``: the C2DB ASE database, rows with a ``workfunction`` key (id = ``uid``);
- ``mp-api``: Materials Project summary documents through the official ``mp-api`` client.

Frames carry the id and the targets in their ``info`` (the ``extxyz`` reader's ``--id-column``
and ``--target`` keys).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from fingerprint_pretrain.builder.build import BuildError
from fingerprint_pretrain.builder.datasets.extxyz import Frame, write_extxyz

__all__ = ["Frame", "PREPARERS", "prepare", "write_extxyz"]


def _sidecar(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def prepare(
    kind: str,
    inputs: list[Path],
    input_sha256: list[str],
    out: Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[Path, dict]:
    """Run the conversion ``kind`` unless ``out`` already holds it for these inputs.

    Returns:
        ``(out, sidecar dict)``: the build input and what it was made from.
    """
    if kind not in PREPARERS:
        raise BuildError(f"unknown preparation {kind!r}; known: {', '.join(PREPARERS)}")
    wanted = {
        "kind": kind,
        "inputs": [{"name": p.name, "sha256": s} for p, s in zip(inputs, input_sha256)],
    }
    side = _sidecar(out)
    if out.is_file() and side.is_file():
        recorded = json.loads(side.read_text())
        if {k: recorded.get(k) for k in wanted} == wanted:
            return out, recorded
    log(f"  converting {', '.join(p.name for p in inputs) or kind} -> {out}")
    info = PREPARERS[kind](inputs, out, progress, log)
    record = {**wanted, **info}
    side.write_text(json.dumps(record, indent=1) + "\n")
    return out, record


# --------------------------------------------------------------------------------------------
# C2DB ASE database
# --------------------------------------------------------------------------------------------
C2DB_TARGET = "workfunction"
C2DB_ID = "uid"


def _c2db_frames(path: Path, counts: dict) -> Iterator[Frame]:
    import ase.db

    db = ase.db.connect(str(path))
    for row in db.select(f"{C2DB_TARGET}"):  # rows that have the key
        kv = row.key_value_pairs
        value = kv.get(C2DB_TARGET)
        if value is None:
            counts["skipped"] += 1
            continue
        atoms = row.toatoms()
        counts["kept"] += 1
        yield (
            atoms.get_atomic_numbers(),
            atoms.get_positions(),
            atoms.get_cell().array,
            tuple(bool(p) for p in atoms.get_pbc()),
            {C2DB_ID: str(kv.get(C2DB_ID, row.id)), C2DB_TARGET: float(value)},
        )


def prepare_c2db(inputs: list[Path], out: Path, progress: bool, log) -> dict:
    """C2DB ASE database -> extxyz of the rows with a work function (id ``uid``)."""
    counts = {"kept": 0, "skipped": 0}
    try:
        written = write_extxyz(_c2db_frames(inputs[0], counts), out, progress)
    except Exception as err:  # ASE raises many types for a file that is not a database
        raise BuildError(f"{inputs[0]}: cannot read as an ASE database: {err}") from None
    if not written:
        raise BuildError(f"{inputs[0]}: no row has a '{C2DB_TARGET}' key; is it C2DB?")
    log(f"  {written:,} rows with a {C2DB_TARGET}")
    return {"records": written}


# --------------------------------------------------------------------------------------------
# Materials Project API (optional extra: pip install '.[mp]')
# --------------------------------------------------------------------------------------------
MP_FIELDS = ("material_id", "structure", "formation_energy_per_atom", "band_gap")


def prepare_mp_api(inputs: list[Path], out: Path, progress: bool, log) -> dict:
    """Today's Materials Project structures and two targets through the official client
    (``mp-api``; API key from ``MP_API_KEY``)."""
    try:
        from mp_api.client import MPRester
    except ImportError:
        raise BuildError(
            "the mp-api source needs the Materials Project client: pip install "
            "'fingerprint-pretrain[mp]' (or pip install mp-api), and an API key in MP_API_KEY"
        ) from None
    key = os.environ.get("MP_API_KEY")
    if not key:
        raise BuildError(
            "MP_API_KEY is not set; get a key at https://materialsproject.org/api "
            "(a free account) and export MP_API_KEY=..."
        )
    with MPRester(key) as mpr:
        docs = mpr.materials.summary.search(fields=list(MP_FIELDS))

    def frames() -> Iterator[Frame]:
        for doc in docs:
            s = doc.structure
            info = {"material_id": str(doc.material_id)}
            for name in MP_FIELDS[2:]:
                value = getattr(doc, name, None)
                info[name] = float(value) if value is not None else float("nan")
            yield (
                np.array(s.atomic_numbers),
                np.asarray(s.cart_coords),
                np.asarray(s.lattice.matrix),
                (True, True, True),
                info,
            )

    written = write_extxyz(frames(), out, progress)
    return {"records": written, "mp_api_fields": list(MP_FIELDS)}


def _prepare_mpf(inputs: list[Path], out: Path, progress: bool, log) -> dict:
    from fingerprint_pretrain.builder.datasets.mpf import convert_mpf

    return convert_mpf(inputs, out, progress=progress, log=log)


PREPARERS: dict[str, Callable[..., dict]] = {
    "mpf": _prepare_mpf,
    "c2db-ase-db": prepare_c2db,
    "mp-api": prepare_mp_api,
}
