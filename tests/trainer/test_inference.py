"""Using a trained checkpoint (trainer.inference): the MAE of ``evaluate_checkpoint`` and the
vectors of ``embed_store``, each against a one-structure-at-a-time computation from the store's
raw records (targets as stored, the label scaling undone by hand with numpy)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from fingerprint_pretrain.schemas import open_store
from fingerprint_pretrain.trainer.checkpoint import load_checkpoint, model_from_checkpoint
from fingerprint_pretrain.trainer.config import TrainConfig
from fingerprint_pretrain.trainer.data import StoreDataset, collate
from fingerprint_pretrain.trainer.errors import TrainingError
from fingerprint_pretrain.trainer.inference import embed_store, evaluate_checkpoint
from fingerprint_pretrain.trainer.train import train

from tests.trainer.conftest import TINY


@pytest.fixture(scope="module")
def finetuned(tiny_store, tmp_path_factory):
    """best.pt of a 2-epoch band-gap fine-tuning from scratch on the tiny store."""
    run = tmp_path_factory.mktemp("inference") / "ft"
    cfg = TrainConfig.defaults("finetune").updated(
        store=str(tiny_store), labels=["band_gap"], run_dir=str(run), epochs=2, **TINY
    )
    train(cfg)
    return run / "best.pt"


def _one_by_one(checkpoint, store, indices):
    """(predictions in eV, stored targets) per structure: the model on one structure at a
    time, y = y' × scale + shift applied with numpy (the checkpoint's scaler)."""
    model, ckpt = model_from_checkpoint(checkpoint)
    args, scaler = ckpt["model_args"], ckpt["scaler"]
    dataset = StoreDataset(store, "graph", [], args["max_neighbors"], args["cutoff"])
    records = open_store(store)
    preds, targets = [], []
    for i in indices:
        batch = collate([dataset[int(i)]])
        with torch.no_grad():
            scaled = model(batch.z, batch.edge_index, batch.edge_vec, batch.batch, 1)
        preds.append(scaled.double().numpy()[0, 0] * scaler["scale"][0] + scaler["shift"][0])
        targets.append(float(records[int(i)]["targets"][0]))
    return np.array(preds), np.array(targets)


def test_evaluate_checkpoint_is_the_mae_of_its_test_split(finetuned, tiny_store, tmp_path):
    test = np.asarray(load_checkpoint(finetuned)["splits"]["test"])
    preds, targets = _one_by_one(finetuned, tiny_store, test)
    out = tmp_path / "pred.csv"
    got = evaluate_checkpoint(finetuned, split="test", out=out, device="cpu")
    assert got["test_structures"] == len(test) == 8
    assert got["test_mae"] == pytest.approx(np.abs(preds - targets).mean(), rel=1e-5)
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    ids = [open_store(tiny_store)[int(i)]["id"] for i in test]
    assert [r["id"] for r in rows] == ids
    assert [float(r["target_band_gap"]) for r in rows] == pytest.approx(targets, rel=1e-12)
    assert [float(r["prediction_band_gap"]) for r in rows] == pytest.approx(preds, rel=1e-5)


def test_evaluate_on_a_whole_store_and_the_split_rule(finetuned, tiny_store):
    every = np.arange(40)
    preds, targets = _one_by_one(finetuned, tiny_store, every)
    got = evaluate_checkpoint(finetuned, store=str(tiny_store), split="all", device="cpu")
    assert got["test_structures"] == 40
    assert got["test_mae"] == pytest.approx(np.abs(preds - targets).mean(), rel=1e-5)
    with pytest.raises(TrainingError, match="--split all"):
        evaluate_checkpoint(finetuned, store=str(tiny_store), split="test", device="cpu")


def test_embeddings_are_the_sum_of_final_node_features(finetuned, tiny_store, tmp_path):
    out = tmp_path / "emb.npz"
    shape = embed_store(finetuned, tiny_store, out, batch_size=7, device="cpu")  # 7: ragged
    saved = np.load(out)
    assert shape == saved["embeddings"].shape == (40, TINY["hidden_channels"])
    records = open_store(tiny_store)
    assert saved["ids"].tolist() == [records[i]["id"] for i in range(40)]
    model, ckpt = model_from_checkpoint(finetuned)
    args = ckpt["model_args"]
    dataset = StoreDataset(tiny_store, "graph", [], args["max_neighbors"], args["cutoff"])
    for i in (0, 13, 39):
        batch = collate([dataset[i]])
        with torch.no_grad():
            x, _ = model.representation(batch.z, batch.edge_index, batch.edge_vec)
        expected = x.double().numpy().sum(axis=0)
        assert x.shape[0] == len(records[i]["z"])
        np.testing.assert_allclose(saved["embeddings"][i], expected, rtol=1e-4, atol=1e-5)
