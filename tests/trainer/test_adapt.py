"""Task-adaptive pre-training (``fp-train finetune --init CKPT --adapt-epochs K``): the
pre-trained model's descriptor pre-training continues on the fine-tuning store's own
structures, then fine-tuning starts from the adaptation's best epoch.

Checked against independent references: the indices actually read from the store (not the
split the code says it used), the labels in the first batch recomputed from the store's records
with the checkpoint's shift and scale, the checkpoint file's sha256 from hashlib, the best
epoch from metrics.csv, and an uninterrupted run for kill -9 / --resume."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from fingerprint_pretrain.schemas import open_store
from fingerprint_pretrain.trainer import train as train_module
from fingerprint_pretrain.trainer.checkpoint import load_checkpoint, save_checkpoint
from fingerprint_pretrain.trainer.cli import main
from fingerprint_pretrain.trainer.config import prepare_run_dir
from fingerprint_pretrain.trainer.data import StoreDataset
from fingerprint_pretrain.trainer.harness.sweep import expand_plan, file_config
from fingerprint_pretrain.trainer.train import TrainingError, train
from fingerprint_pretrain.trainer.zoo import strip_checkpoint

from tests.builder.helpers import MP_SAMPLE, PEROV_SAMPLE, build
from tests.trainer.conftest import copy_store, kill_when
from tests.trainer.test_train import TINY, fp_train, tiny


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Pre-training store (40 MP structures), task store (40 perovskites) with the same label
    set, and the task store without it."""
    root = tmp_path_factory.mktemp("adapt")
    paths = {k: root / f"{k}.lmdb" for k in ("mp", "perov", "bare")}
    build(paths["mp"], MP_SAMPLE, targets=["band_gap"], descriptors=["wacsfset1"])
    build(paths["perov"], PEROV_SAMPLE, targets=["heat_all"], descriptors=["wacsfset1"])
    build(paths["bare"], PEROV_SAMPLE, targets=["heat_all"])
    return paths


@pytest.fixture(scope="module")
def pretrained(stores, tmp_path_factory):
    """best.pt of a 2-epoch pre-training on the MP store."""
    run = tmp_path_factory.mktemp("pre") / "pre"
    cfg = tiny("pretrain", store=str(stores["mp"]), labels=["wacsfset1"], run_dir=str(run))
    train(cfg.updated(epochs=2))
    return run / "best.pt"


def _finetune(stores, pretrained, run_dir, **kw):
    """Fine-tuning of the perovskites' heat_all from ``pretrained``, tiny model, 1 epoch."""
    cfg = tiny(
        "finetune",
        store=str(stores["perov"]),
        labels=["heat_all"],
        init=str(pretrained),
        run_dir=str(run_dir),
        epochs=1,
    )
    return cfg.updated(**kw)


def _cli_finetune(stores, init, run_dir, *extra):
    args = ["finetune", "--store", stores["perov"], "-t", "heat_all", "--init", init]
    return main([str(a) for a in [*args, "--run-dir", run_dir, *TINY[-3:], *extra]])


def test_adaptive_path_end_to_end_records_what_was_adapted_on(
    stores, pretrained, tmp_path, monkeypatch
):
    started_from = {}
    real_transfer = train_module.transfer_weights

    def spy(model, state):
        started_from.update({k: v.clone() for k, v in state.items()})
        return real_transfer(model, state)

    monkeypatch.setattr(train_module, "transfer_weights", spy)
    run = tmp_path / "ft"
    code = _cli_finetune(
        stores, pretrained, run, "--adapt-epochs", "2", "--max-train", "12", "--epochs", "1"
    )
    assert code == 0
    result = json.loads((run / "result.json").read_text())
    adapted = result["adapted"]
    rows = list(csv.DictReader(open(run / "adapt" / "metrics.csv")))
    val = [float(r["val_loss"]) for r in rows]
    assert len(rows) == 2
    assert adapted["from"] == str(pretrained) and adapted["zoo_name"] is None
    assert adapted["sha256"] == hashlib.sha256(pretrained.read_bytes()).hexdigest()
    assert adapted["labels"] == ["wacsfset1"] and adapted["on"] == "train"
    assert adapted["structures"] == 12 and adapted["epochs"] == 2
    assert adapted["best_epoch"] == int(np.argmin(val)) + 1
    assert adapted["val_loss"] == pytest.approx(min(val), rel=1e-6)
    assert adapted["seconds"] == pytest.approx(sum(float(r["seconds"]) for r in rows), rel=1e-6)
    for name in ("best.pt", "last.pt"):  # the fine-tuning checkpoints record it too
        assert load_checkpoint(run / name)["adapted"] == adapted
    # fine-tuning started from the adaptation's best epoch, not from the pre-trained file
    adapted_best = load_checkpoint(run / "adapt" / "best.pt")
    assert adapted_best["epoch"] + 1 == adapted["best_epoch"]
    assert set(started_from) == set(adapted_best["model"])
    for name, value in adapted_best["model"].items():
        assert torch.equal(started_from[name], value), name
    before = load_checkpoint(pretrained)["model"]
    assert not torch.equal(started_from["head.lin1.weight"], before["head.lin1.weight"])
    # the fine-tuning itself: a graph model on the task's target, its test on the test split
    assert result["test_structures"] == 8 and np.isfinite(result["test_mae"])


@pytest.mark.parametrize("on", ["train", "all"])
def test_adaptation_reads_the_training_split_only_unless_all(
    stores, pretrained, tmp_path, monkeypatch, on
):
    reads = []
    real_read = StoreDataset._read  # the one record read of the per-item and batched paths

    def spy(self, index):
        reads.append((self.task, int(index)))
        return real_read(self, index)

    monkeypatch.setattr(StoreDataset, "_read", spy)
    run = tmp_path / on
    train(_finetune(stores, pretrained, run, max_train=12, adapt_epochs=2, adapt_on=on))
    splits = np.load(run / "splits.npz")  # the fine-tuning's own split
    train_idx, val_idx, test_idx = (splits[k].tolist() for k in ("train", "val", "test"))
    assert len(train_idx) == 12 and len(val_idx) == 8 and len(test_idx) == 8
    adapted_on = train_idx if on == "train" else list(range(40))
    node_reads = Counter(i for task, i in reads if task == "node")
    # each of the 2 epochs trains on every adapted structure once and validates on val once
    assert node_reads == Counter((adapted_on + val_idx) * 2)
    if on == "train":
        assert not set(node_reads) & set(test_idx)
        assert not set(node_reads) & (set(range(40)) - set(train_idx) - set(val_idx))
    saved = np.load(run / "adapt" / "splits.npz")
    assert saved["train"].tolist() == adapted_on and saved["val"].tolist() == val_idx
    assert json.loads((run / "result.json").read_text())["adapted"]["structures"] == len(adapted_on)


def test_head_is_carried_over_and_the_checkpoints_scaler_is_used(
    stores, pretrained, tmp_path, monkeypatch
):
    # a zoo-style stripped checkpoint (no optimiser): what --init NAME resolves to
    pre = load_checkpoint(pretrained)
    stripped = tmp_path / "stripped.pt"
    save_checkpoint(strip_checkpoint(pre, "et-tiny-test", "0" * 64), stripped)
    first = {}
    real_forward = train_module.forward

    def spy(model, batch):
        if not first and model.training:
            first["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            first["y"], first["index"] = batch.y.clone(), batch.index.tolist()
        return real_forward(model, batch)

    monkeypatch.setattr(train_module, "forward", spy)
    run = tmp_path / "ft"
    train(_finetune(stores, stripped, run, adapt_epochs=1))
    # the first adaptation step ran the pre-trained model whole: head's last layer included
    assert set(first["state"]) == set(pre["model"])
    for name, value in pre["model"].items():
        assert torch.equal(first["state"][name], value), name
    # its labels: the store's raw descriptors scaled with the checkpoint's shift and scale
    store = open_store(stores["perov"], descriptors=["wacsfset1"])
    raw = np.concatenate([store.get(i)["wacsfset1"] for i in first["index"]])
    shift, scale = np.asarray(pre["scaler"]["shift"]), np.asarray(pre["scaler"]["scale"])
    expected = ((raw.astype(np.float64) - shift) / scale).astype(np.float32)
    np.testing.assert_allclose(first["y"].numpy(), expected, rtol=1e-5, atol=1e-6)
    own = store.manifest["descriptors"]["wacsfset1"]["stats"]  # the task store's statistics
    own_scaled = (raw - np.asarray(own["mean"])) / np.where(
        np.asarray(own["std"]) > 0, own["std"], 1.0
    )
    assert not np.allclose(first["y"].numpy(), own_scaled, atol=1e-3)
    assert load_checkpoint(run / "adapt" / "last.pt")["scaler"] == pre["scaler"]
    adapted = json.loads((run / "result.json").read_text())["adapted"]
    assert adapted["zoo_name"] == "et-tiny-test"
    assert adapted["sha256"] == hashlib.sha256(stripped.read_bytes()).hexdigest()


def test_a_missing_label_set_names_the_fp_build_add_command(stores, pretrained, tmp_path, capsys):
    run = tmp_path / "ft"
    code = _cli_finetune(stores | {"perov": stores["bare"]}, pretrained, run, "--adapt-epochs", "2")
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert f"add them with: fp-build add {stores['bare']} --descriptor wacsfset1" in err
    assert not (run / "adapt").exists() and not (run / "last.pt").exists()
    # without --init there is nothing to adapt: a usage error
    code = main(["finetune", "--store", str(stores["perov"]), "-t", "heat_all", "--run-dir",
                 str(run), "--adapt-epochs", "2"])  # fmt: skip
    assert code == 2 and "--adapt-epochs needs --init" in capsys.readouterr().err


def test_a_label_set_absent_here_names_how_to_get_it(stores, pretrained, tmp_path, capsys):
    here = copy_store(stores["perov"], tmp_path)
    (here / "labels-wacsfset1.mdb").unlink()  # listed in the manifest, its part not here
    url = "https://example.org/stores/perov.lmdb/"
    (here / "origin.json").write_text(json.dumps({"url": url, "parts": {}}))
    run = tmp_path / "ft"
    code = _cli_finetune(stores | {"perov": here}, pretrained, run, "--adapt-epochs", "2")
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "'wacsfset1'" in err and f"fp-build fetch {url} --labels wacsfset1" in err, err
    assert not (run / "adapt").exists() and not (run / "last.pt").exists()


def test_a_fine_tuning_checkpoint_is_refused_and_overwrite_removes_the_adaptation(
    stores, pretrained, tmp_path
):
    ckpt = load_checkpoint(pretrained)
    ckpt["model_args"] = {**ckpt["model_args"], "mode": "finetune"}
    finetuned = tmp_path / "finetuned.pt"
    save_checkpoint(ckpt, finetuned)
    with pytest.raises(TrainingError, match="a fine-tuning checkpoint"):
        train(_finetune(stores, finetuned, tmp_path / "r", adapt_epochs=1))
    # --overwrite deletes the run's files, its adaptation with them, and nothing else
    run = tmp_path / "old"
    (run / "adapt").mkdir(parents=True)
    for name in ("last.pt", "adapt/last.pt", "adapt/adapted.json", "notes.txt"):
        (run / name).write_text("x")
    prepare_run_dir(_finetune(stores, pretrained, run, adapt_epochs=1, overwrite=True))
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_adapt_epochs_0_is_bit_identical_to_no_flag(stores, pretrained, tmp_path):
    plain, zero = tmp_path / "plain", tmp_path / "zero"
    assert _cli_finetune(stores, pretrained, plain, "--epochs", "2") == 0
    assert _cli_finetune(stores, pretrained, zero, "--epochs", "2", "--adapt-epochs", "0") == 0
    assert not (zero / "adapt").exists()
    for name in ("best.pt", "last.pt"):
        a, b = load_checkpoint(plain / name), load_checkpoint(zero / name)
        assert "adapted" not in b and set(a) == set(b)
        for key, value in a["model"].items():
            assert torch.equal(value, b["model"][key]), key
        assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert (plain / "test_predictions.csv").read_bytes() == (
        zero / "test_predictions.csv"
    ).read_bytes()
    assert json.loads((plain / "result.json").read_text()) == json.loads(
        (zero / "result.json").read_text()
    )


@pytest.mark.slow
def test_kill_9_in_adaptation_or_fine_tuning_and_resume_equals_an_uninterrupted_run(
    stores, pretrained, tmp_path
):
    args = ["finetune", "--store", stores["perov"], "-t", "heat_all", "--init", pretrained,
            "--adapt-epochs", "4", "--adapt-batch-size", "4", "--epochs", "4",
            "--batch-size", "4", *TINY[-3:]]  # fmt: skip
    fp_train(*args, "--run-dir", tmp_path / "full")
    for phase, checkpoint in (("adapt", "adapt/last.pt"), ("finetune", "last.pt")):
        run = tmp_path / f"killed-{phase}"
        cmd = [
            sys.executable,
            "-m",
            "fingerprint_pretrain.trainer.cli",
            *map(str, args),
            "--run-dir",
            str(run),
        ]
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL)
        kill_when(proc, run / checkpoint, 1)
        assert load_checkpoint(run / checkpoint)["epoch"] < 3, phase
        assert not (run / "result.json").exists()
        refused = fp_train(*args, "--run-dir", run, check=False)  # no --resume: refused
        assert refused.returncode == 2 and "--resume" in refused.stderr
        fp_train(*args, "--run-dir", run, "--resume")
        for name in ("adapt/last.pt", "adapt/best.pt", "last.pt", "best.pt"):
            full = load_checkpoint(tmp_path / "full" / name)["model"]
            resumed = load_checkpoint(run / name)["model"]
            for key in full:
                assert torch.equal(full[key], resumed[key]), (phase, name, key)
        full, resumed = (
            json.loads((d / "result.json").read_text()) for d in (tmp_path / "full", run)
        )
        assert resumed["test_mae"] == full["test_mae"]
        drop = ("seconds",)
        assert {k: v for k, v in resumed["adapted"].items() if k not in drop} == {
            k: v for k, v in full["adapted"].items() if k not in drop
        }
        rows = list(csv.DictReader(open(run / "adapt" / "metrics.csv")))
        assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]


def test_sweep_plan_expresses_scratch_general_and_adaptive(tmp_path):
    plan = {
        "finetune": {
            "seeds": [111],
            "inits": ["none", "wacsfset1", "wacsfset1+adapt"],
            "adapt_epochs": 3,
            "tasks": [
                {"name": "a", "store": "a.lmdb", "target": "y"},
                {"name": "b", "store": "b.lmdb", "target": "y", "adapt_on": "all"},
            ],
        }
    }
    runs = {(r.task, r.run_dir.parts[-2]): r for r in expand_plan(plan, tmp_path)}
    assert sorted(runs) == [(t, i) for t in "ab" for i in ("none", "wacsfset1", "wacsfset1+adapt")]
    general, adaptive = runs[("a", "wacsfset1")], runs[("a", "wacsfset1+adapt")]
    assert adaptive.needs == general.needs == tmp_path / "pretrain" / "wacsfset1" / "best.pt"
    assert adaptive.config["init"] == general.config["init"]
    assert adaptive.init == "wacsfset1+adapt" and general.init == "wacsfset1"
    assert "adapt_epochs" not in general.config and "adapt_epochs" not in runs[("a", "none")].config
    given = file_config(adaptive)  # what the run's --config file holds
    assert given["adapt_epochs"] == 3 and "adapt_on" not in given
    assert file_config(runs[("b", "wacsfset1+adapt")])["adapt_on"] == "all"
    plan["finetune"].pop("adapt_epochs")
    with pytest.raises(ValueError, match=r"finetune.tasks\[a\].*wacsfset1\+adapt.*adapt_epochs"):
        expand_plan(plan, tmp_path)
    plan["finetune"]["inits"] = ["wacsfset1+fast"]
    with pytest.raises(ValueError, match=r"wacsfset1\+fast"):
        expand_plan(plan, tmp_path)
