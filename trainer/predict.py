"""Predictions of a fine-tuned checkpoint for every structure of a store.

The model, its cutoff and neighbour count come from the checkpoint alone
(:func:`trainer.checkpoint.model_from_checkpoint`); the store needs graphs only (targets are
read where the store has columns of the checkpoint's target names, for the error columns).
Building a store from raw structure files is the builder's job; the composition of the two is
:mod:`fingerprint_pretrain.api` (``fp-train predict``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fingerprint_pretrain.trainer.checkpoint import model_from_checkpoint
from fingerprint_pretrain.trainer.data import LabelScaler, StoreDataset
from fingerprint_pretrain.trainer.errors import TrainingError
from fingerprint_pretrain.trainer.evaluation import forward, ordered_loader, resolve_device

__all__ = ["Predictions", "predict_store", "target_descriptions"]


@dataclass
class Predictions:
    """What a checkpoint predicts for the records of a store.

    Attributes:
        ids: (R,) record ids, in store order.
        names: (T,) target names of the checkpoint.
        units: (T,) their units ("" where the training store gave none).
        values: (R, T) float64 predictions, in the target's unit.
        targets: (R, T) float64 known values (NaN where unknown), or None when the store has
            none of the checkpoint's targets.
    """

    ids: list[str]
    names: list[str]
    units: list[str]
    values: np.ndarray
    targets: np.ndarray | None

    @property
    def errors(self) -> np.ndarray | None:
        """(R, T) |prediction - target| (NaN where the target is unknown), or None."""
        return None if self.targets is None else np.abs(self.values - self.targets)

    def mae(self) -> dict[str, tuple[float, int]]:
        """Per target: (MAE over the records with a known value, how many had one)."""
        if self.targets is None:
            return {}
        out = {}
        for k, name in enumerate(self.names):
            err = self.errors[:, k]
            known = ~np.isnan(err)
            out[name] = (float(err[known].mean()) if known.any() else math.nan, int(known.sum()))
        return out

    def header(self) -> list[str]:
        """CSV header: ``id``, then per target ``<name> [unit]`` and, where known,
        ``<name>_target [unit]`` and ``<name>_abs_error [unit]``."""
        cols = ["id"]
        for name, unit in zip(self.names, self.units):
            tag = f" [{unit}]" if unit else ""
            cols.append(f"{name}{tag}")
            if self.targets is not None:
                cols += [f"{name}_target{tag}", f"{name}_abs_error{tag}"]
        return cols

    def rows(self) -> list[list]:
        out = []
        for r, rid in enumerate(self.ids):
            row: list = [rid]
            for k in range(len(self.names)):
                row.append(_number(self.values[r, k]))
                if self.targets is not None:
                    row += [_number(self.targets[r, k]), _number(self.errors[r, k])]
            out.append(row)
        return out

    def write_csv(self, path: str | Path) -> None:
        """One row per structure (see :meth:`header`), written atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(self.header())
            out.writerows(self.rows())
        tmp.replace(path)


def _number(x: float) -> str:
    return "" if math.isnan(x) else repr(float(x))


def target_descriptions(ckpt: dict) -> tuple[list[str], list[str]]:
    """(names, units) of what a fine-tuned checkpoint predicts."""
    labels = ckpt.get("predicts", {}).get("labels") or [
        {"name": n, "unit": None} for n in ckpt["labels"]
    ]
    return [e["name"] for e in labels], [e.get("unit") or "" for e in labels]


@torch.no_grad()
def predict_store(
    checkpoint: str | Path,
    store: str | Path,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = False,
) -> Predictions:
    """Predictions of ``checkpoint`` (a fine-tuned model) for every record of ``store``.

    Raises:
        TrainingError: a pre-training checkpoint (it predicts descriptor labels per atom), or
            atomic numbers the model cannot embed.
    """
    dev = resolve_device(device)
    model, ckpt = model_from_checkpoint(checkpoint, dev)
    args = ckpt["model_args"]
    if args["mode"] != "finetune":
        raise TrainingError(
            f"{checkpoint}: a pre-training checkpoint predicts descriptor labels per atom, not "
            f"properties; fine-tune it first (fp-train finetune --init {checkpoint} ...) or take "
            f"structure embeddings with fp-train embed"
        )
    names, units = target_descriptions(ckpt)
    probe = StoreDataset(store, "graph", [], args["max_neighbors"], args["cutoff"])
    known = [n for n in names if n in probe.store.target_names]
    labels = names if len(known) == len(names) else []
    dataset = StoreDataset(store, "graph", labels, args["max_neighbors"], args["cutoff"])
    survey = dataset.survey()
    dataset.check_atomic_numbers(args["max_z"], survey)
    scaler = LabelScaler.from_dict(ckpt["scaler"])
    loader = ordered_loader(dataset, batch_size=batch_size)
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc=f"predict {Path(store).name}", unit="batch")
    chunks = []
    for batch in loader:
        batch = batch.to(dev)
        chunks.append(scaler.inverse(forward(model, batch).double()).cpu().numpy())
    values = np.concatenate(chunks) if chunks else np.zeros((0, len(names)))
    ids = [dataset.store.get(i, descriptors=[])["id"] for i in range(len(dataset))]
    targets = survey.targets if labels else None
    return Predictions(ids, names, units, values.reshape(len(ids), len(names)), targets)
