"""``fp-build export``: a store to its Zarr twin or to extended XYZ.

Both exports are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from fingerprint_pretrain.builder.parallel import progress_bar
from fingerprint_pretrain.schemas.manifest import (
    MANIFEST_NAME,
    combine_content_hash,
    write_json_atomic,
)
from fingerprint_pretrain.schemas.store import Store

__all__ = ["export_zarr", "export_extxyz"]

_ATOM_CHUNK = 1 << 16  # rows per chunk of per-atom arrays
_EDGE_CHUNK = 1 << 18  # rows per chunk of per-edge arrays
_BLOCK_RECORDS = 4096  # records gathered in memory before a write


def _progress(iterable, total: int, desc: str, enabled: bool):
    bar = progress_bar(total, 0, desc, enabled, unit="rec")
    if bar is None:
        yield from iterable
        return
    with bar:
        for item in iterable:
            yield item
            bar.update(1)


def export_zarr(store: Store, out: str | os.PathLike, progress: bool = True) -> Path:
    """Write ``store`` as a Zarr store at ``out`` (layout in :mod:`schemas.zarr_store`).

    The manifest is copied with ``backend: "zarr"`` and without the LMDB ``parts``; the
    content hash is unchanged because it is defined over the records' logical content (a store
    of parts lacking some of its label sets exports those present, and its twin's manifest
    lists only them). In order: the empty arrays (:func:`_create_arrays`), the records in
    blocks (:func:`_copy_records`), the offsets, manifest and ``rejected.csv``, then the rename.
    """
    import zarr

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    names = store.descriptor_names
    group = zarr.open_group(str(tmp), mode="w")
    arrays = _create_arrays(group, store.manifest, len(store.target_names), names)
    atom_off, edge_off = _copy_records(store, arrays, names, f"export {out.name}", progress)
    n_rec = len(atom_off) - 1
    _array(group, "atom_offsets", (n_rec + 1,), "int64", 1 << 20)[:] = atom_off
    _array(group, "edge_offsets", (n_rec + 1,), "int64", 1 << 20)[:] = edge_off
    manifest = _zarr_manifest(store.manifest, names)
    group.attrs["manifest"] = manifest
    rejected = store.path / "rejected.csv"
    if rejected.exists():
        shutil.copyfile(rejected, tmp / "rejected.csv")
    write_json_atomic(tmp / MANIFEST_NAME, manifest)
    tmp.rename(out)
    return out


def _array(parent, name: str, shape: tuple, dtype, chunk_rows: int, chunks=None):
    """A Zarr array under ``parent``: chunks of ``chunk_rows`` rows (at least 1, at most the
    rows there are) unless ``chunks`` is given; Zstandard (Zarr's default), then a CRC-32C of
    each compressed chunk, checked by Zarr on every read: a damaged chunk is an error, never
    silently wrong values."""
    import zarr

    chunks = chunks or (min(max(chunk_rows, 1), max(shape[0], 1)), *shape[1:])
    compressors = [zarr.codecs.ZstdCodec(level=0), zarr.codecs.Crc32cCodec()]
    return parent.create_array(
        name, shape=shape, dtype=dtype, chunks=chunks, compressors=compressors
    )


def _create_arrays(group, m: dict, n_targets: int, names: list[str]) -> dict:
    """The twin's empty arrays for the counts of manifest ``m``: ``z``, ``pos``, the edges,
    ``cell``, ``pbc``, ``targets``, ``id`` (flat, by atom/edge/record) and one
    ``descriptors/<set>`` per set of ``names`` (key ``("descriptors", set)``)."""
    n_rec, n_atoms, n_edges = (m["counts"][k] for k in ("records", "atoms", "edges"))
    arrays = {
        "z": _array(group, "z", (n_atoms,), "uint8", _ATOM_CHUNK),
        "pos": _array(group, "pos", (n_atoms, 3), "float64", _ATOM_CHUNK),
        "edge_index": _array(
            group,
            "edge_index",
            (2, n_edges),
            "int32",
            0,
            chunks=(2, min(_EDGE_CHUNK, max(n_edges, 1))),
        ),  # fmt: skip
        # int32: a strongly skewed cell's shifts exceed int16 (the reader narrows per record)
        "edge_shift": _array(group, "edge_shift", (n_edges, 3), "int32", _EDGE_CHUNK),
        "edge_dist": _array(group, "edge_dist", (n_edges,), "float32", _EDGE_CHUNK),
        "cell": _array(group, "cell", (n_rec, 3, 3), "float64", _ATOM_CHUNK),
        "pbc": _array(group, "pbc", (n_rec, 3), "bool", _ATOM_CHUNK),
        "targets": _array(group, "targets", (n_rec, n_targets), "float64", _ATOM_CHUNK),
        "id": _array(group, "id", (n_rec,), str, _ATOM_CHUNK),
    }
    desc_group = group.create_group("descriptors")
    for name in names:
        entry = m["descriptors"][name]
        rows = max(1, (1 << 20) // max(entry["dim"], 1))
        arrays["descriptors", name] = _array(
            desc_group, name, (n_atoms, entry["dim"]), entry["dtype"], rows
        )
    return arrays


def _copy_records(
    store: Store, arrays: dict, names: list[str], desc: str, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Read every record of ``store`` (with the sets ``names``) and write it into ``arrays``,
    :data:`_BLOCK_RECORDS` records at a time.

    Returns:
        ``(atom_offsets, edge_offsets)``: (records + 1,) int64 each, the first atom and edge of
        every record in the flat arrays.
    """
    n_rec = len(store)
    atom_off = np.zeros(n_rec + 1, np.int64)
    edge_off = np.zeros(n_rec + 1, np.int64)
    block: list[dict] = []
    block_start = 0
    for i in _progress(range(n_rec), n_rec, desc, progress):
        rec = store.get(i, descriptors=names)
        atom_off[i + 1] = atom_off[i] + len(rec["z"])
        edge_off[i + 1] = edge_off[i] + len(rec["edge_dist"])
        block.append(rec)
        if len(block) >= _BLOCK_RECORDS:
            _write_block(arrays, names, block, block_start, atom_off, edge_off)
            block_start, block = block_start + len(block), []
    if block:
        _write_block(arrays, names, block, block_start, atom_off, edge_off)
    return atom_off, edge_off


def _write_block(
    arrays: dict,
    names: list[str],
    block: list[dict],
    r0: int,
    atom_off: np.ndarray,
    edge_off: np.ndarray,
) -> None:
    """Write the records ``block`` (records ``r0`` onwards) at their offsets."""
    r1 = r0 + len(block)
    a0, a1 = atom_off[r0], atom_off[r1]
    e0, e1 = edge_off[r0], edge_off[r1]
    arrays["z"][a0:a1] = np.concatenate([r["z"] for r in block])
    arrays["pos"][a0:a1] = np.concatenate([r["pos"] for r in block])
    arrays["edge_index"][:, e0:e1] = np.concatenate([r["edge_index"] for r in block], axis=1)
    arrays["edge_shift"][e0:e1] = np.concatenate([r["edge_shift"].astype(np.int32) for r in block])
    arrays["edge_dist"][e0:e1] = np.concatenate([r["edge_dist"] for r in block])
    arrays["cell"][r0:r1] = np.stack([r["cell"] for r in block])
    arrays["pbc"][r0:r1] = np.stack([r["pbc"] for r in block])
    n_targets = arrays["targets"].shape[1]
    arrays["targets"][r0:r1] = np.stack([r["targets"] for r in block]).reshape(
        len(block), n_targets
    )
    arrays["id"][r0:r1] = np.array([r["id"] for r in block], dtype=str)
    for name in names:
        arrays["descriptors", name][a0:a1] = np.concatenate([r[name] for r in block])


def _zarr_manifest(m: dict, names: list[str]) -> dict:
    """The twin's manifest: the store's, ``backend: "zarr"``, without the LMDB ``parts``, and
    listing only the label sets exported (those present; the content hash follows)."""
    manifest = {k: v for k, v in m.items() if k != "parts"}
    manifest["backend"] = "zarr"
    descriptors = m.get("descriptors", {})
    if list(descriptors) != list(names):
        manifest["descriptors"] = {name: descriptors[name] for name in names}
        manifest["content_hash"] = combine_content_hash(
            m["graphs_hash"], {name: descriptors[name]["hash"] for name in names}
        )
    return manifest


def _xyz_value(value) -> str:
    text = str(value)
    if any(c in text for c in ' ="\t'):
        return '"' + text.replace('"', '\\"') + '"'
    return text


def export_extxyz(store: Store, out: str | os.PathLike, progress: bool = True) -> Path:
    """Write every structure (atoms, cell, pbc, id, targets) as extended XYZ frames.

    Graph edges and descriptor labels are not exported (extxyz has no place for them).
    """
    from pymatgen.core.periodic_table import Element

    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    symbols = {}
    names = store.target_names
    with open(tmp, "w") as fh:
        for i in _progress(range(len(store)), len(store), f"export {out.name}", progress):
            rec = store.get(i, descriptors=[])
            lattice = " ".join(f"{v:.16g}" for v in rec["cell"].reshape(-1))
            pbc = " ".join("T" if p else "F" for p in rec["pbc"])
            info = [f"id={_xyz_value(rec['id'])}"]
            info += [f"{n}={float(v):.17g}" for n, v in zip(names, rec["targets"])]
            fh.write(f"{len(rec['z'])}\n")
            fh.write(
                f'Lattice="{lattice}" Properties=species:S:1:pos:R:3 pbc="{pbc}" '
                + " ".join(info)
                + "\n"
            )
            for z, (x, y, zz) in zip(rec["z"], rec["pos"]):
                if z not in symbols:
                    symbols[z] = Element.from_Z(int(z)).symbol
                fh.write(f"{symbols[z]} {x:.16g} {y:.16g} {zz:.16g}\n")
    os.replace(tmp, out)
    return out
