"""Running a model over a store: the device, the record order, loaders and evaluation.

Shared by the training loop (:mod:`trainer.train`), inference (:mod:`trainer.inference`),
prediction (:mod:`trainer.predict`) and the run report (:mod:`trainer.harness.run_report`), so
none of them imports another for these: the dependency runs one way, from each of them to here.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import torch
from fingerprint_pretrain.trainer.config import TrainConfig
from fingerprint_pretrain.trainer.data import Batch, LabelScaler, StoreDataset, collate
from torch.utils.data import DataLoader, Sampler

__all__ = [
    "EpochSampler",
    "evaluate_split",
    "forward",
    "ordered_loader",
    "resolve_device",
    "store_loader",
]


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` means: ``"auto"`` is this process's GPU (``LOCAL_RANK``) where
    CUDA is available, else the CPU; any other name is passed to ``torch.device``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


class EpochSampler(Sampler[int]):
    """Indices of one split in an order fixed by (seed, epoch), sharded over ranks.

    Each rank gets every ``world``-th index of the list. Training (``shuffle``) lists are
    padded by wrapping so all ranks take the same number of steps (DDP synchronises every
    step); evaluation lists are not, so no structure is counted twice.
    """

    def __init__(self, indices: np.ndarray, seed: int, shuffle: bool, rank: int, world: int):
        self.indices = np.asarray(indices)
        self.seed, self.shuffle, self.rank, self.world = seed, shuffle, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        order = self.indices
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = order[rng.permutation(len(order))]
        per_rank = math.ceil(len(order) / self.world)
        if self.shuffle and per_rank * self.world > len(order) and len(order):
            order = np.resize(order, per_rank * self.world)
        return order[self.rank :: self.world]

    def __iter__(self):
        return iter(self._order().tolist())

    def __len__(self) -> int:
        return len(self._order())


def store_loader(dataset, sampler, cfg: TrainConfig, device: torch.device) -> DataLoader:
    """Batches of ``dataset`` in ``sampler``'s order with ``cfg``'s batch size and workers."""
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        prefetch_factor=4 if cfg.num_workers > 0 else None,
    )


def forward(model, batch: Batch) -> torch.Tensor:
    """``model``'s output on ``batch``: (N, D) per atom or (num_graphs, D) per structure."""
    return model(batch.z, batch.edge_index, batch.edge_vec, batch.batch, batch.num_graphs)


def ordered_loader(dataset, indices=None, batch_size: int = 64) -> DataLoader:
    """Batches of the records ``indices`` of ``dataset`` (default: all) in that order, in this
    process (no workers): what inference, prediction and reports read a store with."""
    indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=collate,
        sampler=EpochSampler(indices, 0, False, 0, 1),
    )


@torch.no_grad()
def evaluate_split(
    model,
    dataset: StoreDataset,
    indices,
    cfg: TrainConfig,
    device,
    scaler: LabelScaler,
    predictions_csv: Path | None,
) -> dict:
    """MAE (label units) of ``model`` on ``indices``; writes (id, target, prediction) rows."""
    model.eval()
    loader = store_loader(dataset, EpochSampler(indices, 0, False, 0, 1), cfg, device)
    abs_sum, n_labels, rows = 0.0, 0, []
    for batch in loader:
        batch = batch.to(device)
        pred = scaler.inverse(forward(model, batch).double()).cpu()
        if dataset.task == "graph":  # exact stored targets, not a float32 round trip
            ids, labels = zip(*(dataset.raw(i) for i in batch.index.tolist()))
            y = torch.tensor(np.concatenate(labels))
            rows += [[i, *t.tolist(), *p.tolist()] for i, t, p in zip(ids, y, pred)]
        else:
            y = scaler.inverse(batch.y.double().cpu())
        err = (pred - y).abs()
        mask = ~torch.isnan(err)
        abs_sum += err[mask].sum().item()
        n_labels += int(mask.sum())
    if predictions_csv is not None and dataset.task == "graph":
        with open(predictions_csv, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(
                [
                    "id",
                    *[f"target_{n}" for n in dataset.labels],
                    *[f"prediction_{n}" for n in dataset.labels],
                ]
            )
            out.writerows(rows)
    return {"test_mae": abs_sum / max(n_labels, 1), "test_structures": int(len(indices))}
