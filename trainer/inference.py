"""Using a trained checkpoint: evaluation on a split or store, and structure embeddings.

The model is rebuilt from the checkpoint alone (:func:`trainer.checkpoint.model_from_checkpoint`):
architecture, cutoff and neighbour count come from its ``model_args``, never from flags.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from fingerprint_pretrain.trainer.checkpoint import (
    model_from_checkpoint,
)  # re-exported: fingerprint_pretrain.trainer.inference API
from fingerprint_pretrain.trainer.config import TrainConfig
from fingerprint_pretrain.trainer.data import LabelScaler, StoreDataset
from fingerprint_pretrain.trainer.errors import TrainingError
from fingerprint_pretrain.trainer.evaluation import evaluate_split, ordered_loader, resolve_device

__all__ = ["evaluate_checkpoint", "embed_store", "model_from_checkpoint"]


def evaluate_checkpoint(checkpoint, store=None, split="test", out=None, device="auto") -> dict:
    """MAE of the checkpoint on ``split`` of its run's store, or on all of ``store``."""
    dev = resolve_device(device)
    model, ckpt = model_from_checkpoint(checkpoint, dev)
    args = ckpt["model_args"]
    cfg = TrainConfig(**ckpt["config"])
    level = "node" if args["mode"] == "pretrain" else "graph"
    scaler = LabelScaler.from_dict(ckpt["scaler"])
    path = store or ckpt["store"]["path"]
    if store and split != "all":
        raise TrainingError("--split applies to the run's own store; use --split all with --store")
    dataset = StoreDataset(
        path, level, ckpt["labels"], args["max_neighbors"], args["cutoff"], scaler
    )
    indices = np.arange(len(dataset)) if split == "all" else np.asarray(ckpt["splits"][split])
    dataset.check_atomic_numbers(args["max_z"], dataset.survey(indices))
    return evaluate_split(
        model, dataset, indices, cfg.updated(num_workers=0), dev, scaler, Path(out) if out else None
    )


@torch.no_grad()
def embed_store(checkpoint, store, out, batch_size: int = 64, device="auto") -> tuple[int, int]:
    """Write ``out`` (.npz) with ``ids`` (R,) and ``embeddings`` (R, H) float32: the sum over
    atoms of the final node features of the checkpoint's representation."""
    dev = resolve_device(device)
    model, ckpt = model_from_checkpoint(checkpoint, dev)
    args = ckpt["model_args"]
    dataset = StoreDataset(store, "graph", [], args["max_neighbors"], args["cutoff"])
    dataset.check_atomic_numbers(args["max_z"])
    loader = ordered_loader(dataset, batch_size=batch_size)
    chunks, ids = [], []
    for batch in loader:
        batch = batch.to(dev)
        x, _ = model.representation(batch.z, batch.edge_index, batch.edge_vec)
        pooled = torch.zeros(batch.num_graphs, x.shape[1], device=dev).index_add_(0, batch.batch, x)
        chunks.append(pooled.float().cpu().numpy())
        ids += [dataset.raw(i)[0] for i in batch.index.tolist()]
    embeddings = np.concatenate(chunks)
    np.savez(out, ids=np.array(ids), embeddings=embeddings)
    return embeddings.shape
