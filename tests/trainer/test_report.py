"""``fp-train report RUN_DIR`` on one run: a fine-tuning run's metrics (checked against numpy on
its test_predictions.csv and the store's training targets), learning curve and parity plot; a
pre-training run's test error per label set and feature group in standardised label units
(checked against a per-structure loop standardising the store's raw labels with the manifest's
statistics)."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from fingerprint_pretrain.schemas import open_store
from fingerprint_pretrain.trainer.checkpoint import model_from_checkpoint
from fingerprint_pretrain.trainer.cli import main
from fingerprint_pretrain.trainer.config import TrainConfig
from fingerprint_pretrain.trainer.data import StoreDataset, collate
from fingerprint_pretrain.trainer.harness.run_report import (
    is_run_dir,
    standardised_errors,
    write_run_report,
)
from fingerprint_pretrain.trainer.train import train

from tests.trainer.conftest import TINY


@pytest.fixture(scope="module")
def store(tiny_store):
    """The trainer tests' shared tiny store (read only here)."""
    return tiny_store


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for mode, labels in (("pretrain", ["wacsfset1"]), ("finetune", ["band_gap"])):
        cfg = TrainConfig.defaults(mode).updated(
            store=str(store), labels=labels, run_dir=str(root / mode), epochs=3, **TINY
        )
        train(cfg)
    return root


def _png_shape(path) -> tuple:
    import matplotlib.image

    return matplotlib.image.imread(path).shape


def _cell(text: str, row: str, column: int) -> str:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {row} |"))
    return [c.strip() for c in line.strip("|").split("|")][column]


def test_report_of_one_fine_tuning_run(runs, store, capsys):
    run = runs / "finetune"
    assert is_run_dir(run) and not is_run_dir(runs)
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
    text = (run / "report" / "report.md").read_text()
    with open(run / "test_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    t = np.array([float(r["target_band_gap"]) for r in rows])
    p = np.array([float(r["prediction_band_gap"]) for r in rows])
    err = p - t
    assert _cell(text, "band_gap", 1) == "eV" and int(_cell(text, "band_gap", 2)) == len(t) == 8
    assert float(_cell(text, "band_gap", 3)) == pytest.approx(np.abs(err).mean(), rel=1e-5)
    assert float(_cell(text, "band_gap", 3)) == pytest.approx(
        json.loads((run / "result.json").read_text())["test_mae"], rel=1e-5
    )
    assert float(_cell(text, "band_gap", 4)) == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-5)
    r2 = 1 - np.sum(err**2) / np.sum((t - t.mean()) ** 2)
    assert float(_cell(text, "band_gap", 5)) == pytest.approx(r2, abs=1e-4)
    assert float(_cell(text, "band_gap", 6)) == pytest.approx(np.abs(err).max(), rel=1e-5)
    # the training split's mean, from the store itself, as a constant predictor
    train_idx = np.load(run / "splits.npz")["train"]
    s = open_store(store)
    mean = np.mean([s[int(i)]["targets"][0] for i in train_idx])
    assert float(_cell(text, "band_gap", 7)) == pytest.approx(np.abs(t - mean).mean(), rel=1e-5)
    with open(run / "metrics.csv") as fh:
        val = [float(r["val_loss"]) for r in csv.DictReader(fh)]
    assert f"| best epoch (lowest validation loss) | {int(np.argmin(val)) + 1} |" in text
    assert "| epochs | 3 of 3 |" in text
    for name in ("learning_curve.png", "parity.png"):
        assert f"]({name})" in text
        height, width, _ = _png_shape(run / "report" / name)
        assert height > 200 and width > 200


def _group_of(name: str) -> str:
    """wACSF feature names are eta=<η>,Rs=<Rs>: the group is the η."""
    return re.fullmatch(r"(eta=[^,]+),Rs=[^,]+", name).group(1)


def test_report_of_one_pretraining_run_in_standardised_units(runs, store, tmp_path, capsys):
    run = runs / "pretrain"
    got = standardised_errors(run)
    # reference: one structure at a time, raw labels standardised with the manifest's stats
    model, ckpt = model_from_checkpoint(run / "best.pt")
    entry = open_store(store).manifest["descriptors"]["wacsfset1"]
    mean, std = np.array(entry["stats"]["mean"]), np.array(entry["stats"]["std"])
    std = np.where(std > 0, std, 1.0)
    dataset = StoreDataset(store, "node", ["wacsfset1"], 32, 8.0)  # unscaled labels
    s = open_store(store)
    abs_err, abs_y, atoms = np.zeros(48), np.zeros(48), 0
    for i in ckpt["splits"]["test"].tolist():
        batch = collate([dataset[i]])
        with torch.no_grad():
            pred = model(batch.z, batch.edge_index, batch.edge_vec, batch.batch, 1)
        y = (np.asarray(s[i]["wacsfset1"], np.float64) - mean) / std
        abs_err += np.abs(pred.double().numpy() - y).sum(0)
        abs_y += np.abs(y).sum(0)
        atoms += len(y)
    per_feature, floor = abs_err / atoms, abs_y / atoms
    assert got["atoms"] == atoms and got["structures"] == 6 and got["scaling"] == "per_feature"
    rows = {r["group"]: r for r in got["rows"]}
    assert rows["all"]["mae"] == pytest.approx(per_feature.mean(), rel=1e-5)
    assert rows["all"]["mean_predictor_mae"] == pytest.approx(floor.mean(), rel=1e-5)
    groups = [_group_of(n) for n in entry["feature_names"]]
    assert set(rows) - {"all"} == set(groups) and len(set(groups)) == 6
    for g in set(groups):
        cols = [k for k, x in enumerate(groups) if x == g]
        assert rows[g]["features"] == len(cols) == 8
        assert rows[g]["mae"] == pytest.approx(per_feature[cols].mean(), rel=1e-5)
        assert rows[g]["mean_predictor_mae"] == pytest.approx(floor[cols].mean(), rel=1e-5)
    # the markdown report shows them, beside the learning curve
    out = tmp_path / "pre.md"
    assert main(["report", str(run), "--out", str(out), "--device", "cpu"]) == 0
    text = out.read_text()
    assert "## Test error in standardised label units" in text
    line = next(ln for ln in text.splitlines() if "**all**" in ln)
    assert f"| {rows['all']['mae']:.4g} |" in line and "| wacsfset1 | wacsf |" in line
    assert (
        "](pre/learning_curve.png)" in text and (tmp_path / "pre" / "learning_curve.png").exists()
    )
    # without its store, the report says so instead of failing
    ckpt_store = tmp_path / "elsewhere.lmdb"
    path = write_run_report(run, tmp_path / "r2", store=ckpt_store)
    assert "Not computed: " in path.read_text() and str(ckpt_store) in path.read_text()


def _fake_run(run, mae: float, epoch_seconds: list[float], adapted: dict | None, where: str):
    """A hand-written finished fine-tuning run: result.json, metrics.csv, test_predictions.csv,
    and the adaptation record in result.json (``where="result"``) or adapt/adapted.json."""
    run.mkdir(parents=True)
    result = {"epochs": len(epoch_seconds), "test_mae": mae, "test_structures": 2}
    if adapted and where == "result":
        result["adapted"] = adapted
    elif adapted:
        (run / "adapt").mkdir()
        (run / "adapt" / "adapted.json").write_text(json.dumps(adapted))
    (run / "result.json").write_text(json.dumps(result))
    lines = ["epoch,train_loss,val_loss,val_mae,lr,seconds,steps"]
    lines += [f"{k + 1},1.0,1.0,{mae},0.001,{s},3" for k, s in enumerate(epoch_seconds)]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    (run / "test_predictions.csv").write_text("id,target_y,prediction_y\n0,1.0,1.5\n1,2.0,2.5\n")


def test_sweep_report_shows_the_cost_of_task_adaptive_pretraining(tmp_path):
    from fingerprint_pretrain.trainer.harness.report import write_report

    runs = tmp_path / "runs"
    base = runs / "finetune" / "jdft2d" / "n100"
    for seed, mae in ((111, 50.0), (222, 60.0)):
        _fake_run(base / "none" / f"seed{seed}", mae, [1.0, 1.0], None, "")
    adapted = {"on": "train", "structures": 100, "epochs": 20, "labels": ["eadset1"]}
    # seed 111 records it in result.json, seed 222 only in adapt/adapted.json (older runs)
    _fake_run(base / "eadset1+adapt" / "seed111", 40.0, [1.5, 2.5], adapted | {"seconds": 10.0},
              "result")  # fmt: skip
    _fake_run(base / "eadset1+adapt" / "seed222", 45.0, [3.0, 5.0], adapted | {"seconds": 30.0},
              "file")  # fmt: skip
    text = write_report(runs, tmp_path / "r.md", tsne=False).read_text()
    section = text.split("## Task-adaptive pre-training cost")[1].split("\n## ")[0]
    row = next(ln for ln in section.splitlines() if ln.startswith("| jdft2d |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # by hand: adaptation (10 + 30) / 2 = 20 s, std sqrt(200) = 14.1; fine-tuning (1.5 + 2.5)
    # = 4 and (3 + 5) = 8 s: mean 6, std sqrt(8) = 2.83; ratio 20 / 6 = 3.33
    assert cells == [
        "jdft2d", "100", "eadset1+adapt", "20", "100 (train)",
        "20 ± 14 (2)", "6 ± 2.8 (2)", "3.3",
    ]  # fmt: skip
    table = [ln for ln in section.splitlines() if ln.startswith("| ")]
    assert len(table) == 2 and table[1] == row  # header + the adapted init's only row
    # the test-MAE table keeps its layout: one row per init, no extra column
    assert "| pre-training | jdft2d | avg % improvement |" in text
    assert _cell(text, "eadset1+adapt", 1).startswith("42.5 ± 3.5 (2; better on 2/2)")
    # a sweep without adapted runs gets no such section
    (base / "eadset1+adapt").rename(tmp_path / "gone")
    assert "Task-adaptive" not in write_report(runs, tmp_path / "s.md", tsne=False).read_text()
