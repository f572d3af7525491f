"""``predict`` and ``embed`` for raw structures: builder (graphs) + trainer (model) composed.

Inputs, each of them any of:

- a store directory (``*.lmdb`` / ``*.zarr`` with a manifest): used as it is;
- a path the builder reads: CSV with CIFs, CGCNN folder, extxyz, ASE database, pymatgen or
  MatBench JSON, MatDeepLearn JSON, a folder of CIF/POSCAR files, a single structure file,
  or a glob pattern of them (``"cifs/*.cif"``);
- a pymatgen ``Structure`` or an ASE ``Atoms`` (ids: ``properties["id"]`` / ``info["id"]``
  or ``material_id`` where set, else ``structure-<k>``).

Raw inputs become one temporary store built with the checkpoint's own graph settings (its
cutoff; nearest-K selection is the trainer's, from the checkpoint): the user passes nothing
about graphs. Structures the builder rejects are listed with the reason; all others are
predicted.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PredictionTable", "embed", "predict", "resolve_checkpoint"]

REJECTED_FIELDS = ("source", "row_kind", "row", "id", "reason")


@dataclass
class PredictionTable:
    """Predictions for the accepted structures, and the rejected ones with their reasons.

    Attributes:
        predictions: :class:`trainer.predict.Predictions` (ids, values (R, T) in the targets'
            units, known targets or None).
        rejected: one dict per structure the builder refused (``source``, ``row_kind``,
            ``row``, ``id``, ``reason``).
    """

    predictions: Any
    rejected: list[dict] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return self.predictions.ids

    @property
    def values(self) -> np.ndarray:
        """(R, T) float64 predictions."""
        return self.predictions.values

    def frame(self):
        """A pandas DataFrame with the columns of the CSV (``id``, ``<target> [unit]``, ...)."""
        import pandas as pd

        p = self.predictions
        columns: dict[str, Any] = {"id": p.ids}
        header = iter(p.header()[1:])
        for k in range(len(p.names)):
            columns[next(header)] = p.values[:, k]
            if p.targets is not None:
                columns[next(header)] = p.targets[:, k]
                columns[next(header)] = p.errors[:, k]
        return pd.DataFrame(columns)

    def summary(self) -> str:
        """One line per fact: counts, and the MAE per target where targets were known."""
        p = self.predictions
        lines = [f"{len(p.ids)} structures predicted, {len(self.rejected)} rejected"]
        for name, unit in zip(p.names, p.units):
            mae, n = p.mae().get(name, (None, 0))
            if n:
                lines.append(f"{name}: MAE {mae:.6g} {unit} on the {n} structures with a target")
        return "\n".join(lines)

    def write(self, out: str | os.PathLike) -> Path | None:
        """Write the predictions CSV ``out`` and, when any structure was rejected,
        ``<out stem>.rejected.csv`` next to it (returned; None when nothing was rejected)."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.predictions.write_csv(out)
        rejected = out.with_name(out.name.removesuffix(".csv") + ".rejected.csv")
        if not self.rejected:
            rejected.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
            return None
        with open(rejected, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(REJECTED_FIELDS))
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in REJECTED_FIELDS} for r in self.rejected)
        return rejected


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint file, or a model of the zoo by name (``fp-train models`` lists them)."""
    try:
        from fingerprint_pretrain.trainer.zoo import resolve
    except ImportError:  # a zoo-less install: files only
        return Path(name_or_path)
    return Path(resolve(str(name_or_path)))


def _is_store(path: Path) -> bool:
    return path.is_dir() and (path / "manifest.json").is_file()


def _structure_id(obj, k: int) -> str:
    meta = getattr(obj, "properties", None)
    if meta is None:
        meta = getattr(obj, "info", None) or {}
    for key in ("id", "material_id"):
        if meta.get(key) not in (None, ""):
            return str(meta[key])
    return f"structure-{k}"


def _objects_to_files(objects: list[tuple[int, Any]], folder: Path) -> list[str]:
    """pymatgen Structures -> one pymatgen JSON file; ASE Atoms -> one extxyz file."""
    import ase.io

    def is_structure(o) -> bool:
        return hasattr(o, "lattice") and hasattr(o, "sites")

    def is_atoms(o) -> bool:
        return hasattr(o, "get_positions") and hasattr(o, "cell")

    structures = [(k, o) for k, o in objects if is_structure(o)]
    atoms = [(k, o) for k, o in objects if is_atoms(o) and not is_structure(o)]
    unknown = [type(o).__name__ for _, o in objects if not (is_structure(o) or is_atoms(o))]
    if unknown:
        raise TypeError(
            f"cannot predict on {', '.join(sorted(set(unknown)))}: give paths, stores, pymatgen "
            f"Structures or ASE Atoms"
        )
    paths = []
    if structures:
        path = folder / "structures.json"
        items = [{"id": _structure_id(s, k), "structure": s.as_dict()} for k, s in structures]
        path.write_text(json.dumps(items))
        paths.append(str(path))
    if atoms:
        path = folder / "atoms.extxyz"
        frames = []
        for k, a in atoms:
            frame = a.copy()
            frame.calc = None
            frame.info = {"id": _structure_id(a, k)}
            frames.append(frame)
        ase.io.write(path, frames, format="extxyz")
        paths.append(str(path))
    return paths


def _split_inputs(inputs, folder: Path) -> tuple[list[Path], list[str]]:
    """(stores, raw paths for one build) from the user's inputs."""
    from fingerprint_pretrain.builder.readers import expand_inputs

    if not isinstance(inputs, (list, tuple)):  # one input (a Structure is iterable: its sites)
        inputs = [inputs]
    stores, raw, objects = [], [], []
    for k, item in enumerate(inputs):
        if isinstance(item, (str, os.PathLike)):
            for path in expand_inputs([item]):
                (stores if _is_store(Path(path)) else raw).append(
                    Path(path) if _is_store(Path(path)) else path
                )
        else:
            objects.append((k, item))
    if objects:
        raw += _objects_to_files(objects, folder)
    return stores, raw


def _targets_available(paths: Sequence[str], names: list[str], targets_csv, id_column) -> bool:
    """Whether every raw input has columns for the checkpoint's targets."""
    from fingerprint_pretrain.builder.readers import InputError, open_input

    try:
        for path in paths:
            open_input(path, None, names, id_column, targets_csv=targets_csv)
    except InputError:
        return False
    return True


def build_graphs(
    paths: Sequence[str],
    checkpoint_args: dict,
    out: Path,
    targets: list[str],
    targets_csv: str | None = None,
    id_column: str | None = None,
    jobs: int = 1,
    progress: bool = True,
) -> tuple[Path, list[dict]]:
    """A store of ``paths`` with the checkpoint's graph settings; returns (store, rejected).

    Raises:
        builder.build.BuildError: nothing could be built (every structure rejected: the
            message names the first reason and the rejected file).
    """
    from fingerprint_pretrain.builder.build import BuildOptions, build_store

    store = out / "predict.lmdb"
    build_store(
        BuildOptions(
            inputs=list(paths),
            out=str(store),
            cutoff=float(checkpoint_args["cutoff"]),
            jobs=jobs,
            targets=targets,
            targets_csv=targets_csv if targets else None,
            id_column=id_column,
            allow_missing_targets=True,
            progress=progress,
        )
    )
    rejected_csv = store / "rejected.csv"
    rejected = []
    if rejected_csv.is_file():
        with open(rejected_csv, newline="") as fh:
            rejected = list(csv.DictReader(fh))
    return store, rejected


def _merge(parts: list) -> Any:
    from fingerprint_pretrain.trainer.predict import Predictions

    first = parts[0]
    targets = [p.targets for p in parts]
    if any(t is not None for t in targets):
        targets = [
            t if t is not None else np.full_like(p.values, np.nan) for t, p in zip(targets, parts)
        ]
        merged_targets = np.concatenate(targets)
    else:
        merged_targets = None
    return Predictions(
        ids=[i for p in parts for i in p.ids],
        names=first.names,
        units=first.units,
        values=np.concatenate([p.values for p in parts]),
        targets=merged_targets,
    )


def predict(
    inputs,
    checkpoint: str | os.PathLike,
    *,
    targets_csv: str | os.PathLike | None = None,
    id_column: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    jobs: int = 1,
    progress: bool = True,
) -> PredictionTable:
    """Predictions of a fine-tuned checkpoint for ``inputs`` (see the module docstring).

    Args:
        inputs: one input or a list of them (paths, stores, globs, Structures, Atoms).
        checkpoint: a fine-tuned checkpoint file or a zoo name.
        targets_csv: known targets of folders/files of structures, joined by id: adds the
            target and error columns.
        id_column: id column of CSV inputs / of ``targets_csv``.
        batch_size: structures per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        jobs: builder worker processes for raw inputs (-1: all cores).
        progress: progress bars.

    Returns:
        :class:`PredictionTable`: ``.frame()`` (pandas), ``.write(csv)``, ``.summary()``.
    """
    from fingerprint_pretrain.trainer.checkpoint import load_checkpoint
    from fingerprint_pretrain.trainer.predict import predict_store, target_descriptions

    path = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    names, _ = target_descriptions(ckpt)
    with tempfile.TemporaryDirectory(prefix="fp-predict-") as tmp:
        folder = Path(tmp)
        stores, raw = _split_inputs(inputs, folder)
        rejected: list[dict] = []
        if raw:
            csv_path = str(targets_csv) if targets_csv else None
            wanted = names if _targets_available(raw, names, csv_path, id_column) else []
            store, rejected = build_graphs(
                raw, ckpt["model_args"], folder, wanted, csv_path, id_column, jobs, progress
            )
            stores.append(store)
        if not stores:
            raise ValueError("nothing to predict: no inputs given")
        parts = [predict_store(path, s, batch_size, device, progress) for s in stores]
    return PredictionTable(_merge(parts), rejected)


def embed(
    inputs,
    checkpoint: str | os.PathLike,
    *,
    id_column: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    jobs: int = 1,
    progress: bool = True,
) -> tuple[list[str], np.ndarray, list[dict]]:
    """Structure embeddings of ``inputs`` (the sum over atoms of the checkpoint's final node
    features; any checkpoint, pre-trained or fine-tuned).

    Returns:
        ``(ids, embeddings (R, H) float32, rejected)``.
    """
    from fingerprint_pretrain.trainer.checkpoint import load_checkpoint
    from fingerprint_pretrain.trainer.inference import embed_store

    path = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    ids: list[str] = []
    chunks: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="fp-embed-") as tmp:
        folder = Path(tmp)
        stores, raw = _split_inputs(inputs, folder)
        rejected: list[dict] = []
        if raw:
            store, rejected = build_graphs(
                raw, ckpt["model_args"], folder, [], None, id_column, jobs, progress
            )
            stores.append(store)
        for k, store in enumerate(stores):
            out = folder / f"embedding{k}.npz"
            embed_store(path, store, out, batch_size, device)
            with np.load(out, allow_pickle=False) as data:
                ids += [str(i) for i in data["ids"]]
                chunks.append(data["embeddings"])
    return ids, np.concatenate(chunks), rejected
