"""fp-train end to end on real structures: pre-train -> fine-tune, transfer, evaluation and
embeddings, exact resume after kill -9, NaN guard, schema refusal, two-process DDP (gloo)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from fingerprint_pretrain.schemas import open_store
from fingerprint_pretrain.trainer.config import TrainConfig
from fingerprint_pretrain.trainer.train import TrainingError, load_checkpoint, train

from tests.builder.helpers import MP_SAMPLE, build
from tests.trainer.conftest import TINY as TINY_KEYS
from tests.trainer.conftest import kill_when

TINY = [
    "--hidden-channels",
    "16",
    "--num-layers",
    "1",
    "--num-rbf",
    "8",
    "--num-heads",
    "2",
    "--head-channels",
    "16",
    "--num-workers",
    "0",
    "--no-progress",
]


def tiny(mode: str, **kw) -> TrainConfig:
    """The defaults of ``mode`` with the tiny model (:data:`tests.trainer.conftest.TINY`)."""
    return TrainConfig.defaults(mode).updated(**TINY_KEYS, **kw)


def fp_train(*args, env=None, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "fingerprint_pretrain.trainer.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "mp.lmdb"
    build(
        out, MP_SAMPLE, targets=["band_gap", "formation_energy_per_atom"], descriptors=["wacsfset1"]
    )
    return out


@pytest.fixture(scope="module")
def pretrained(store, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "pre"
    fp_train(
        "pretrain", "--store", store, "-d", "wacsfset1", "--run-dir", run, "--epochs", "3", *TINY
    )
    return run


def test_pretrain_writes_checkpoints_logs_and_split(pretrained, store):
    for name in ("best.pt", "last.pt", "metrics.csv", "splits.npz", "config.json"):
        assert (pretrained / name).exists(), name
    assert any((pretrained / "tensorboard").iterdir())
    rows = list(csv.DictReader(open(pretrained / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    splits = np.load(pretrained / "splits.npz")
    parts = [splits[k] for k in ("train", "val", "test")]
    assert [len(p) for p in parts] == [32, 2, 6]  # 0.8 / 0.05 / 0.15 of 40
    assert sorted(np.concatenate(parts).tolist()) == list(range(40))
    ckpt = load_checkpoint(pretrained / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["max_neighbors"] == 32
    assert ckpt["store"]["content_hash"] == open_store(store).content_hash
    assert ckpt["model_args"]["out_dim"] == 48


def _from_pretrained(store, pretrained, run) -> list:
    """fp-train arguments: fine-tune band_gap on ``store`` from ``pretrained``/best.pt."""
    return ["finetune", "--store", store, "-t", "band_gap", "--init", pretrained / "best.pt",
            "--run-dir", run]  # fmt: skip


def test_finetune_from_pretrained_and_from_scratch(pretrained, store, tmp_path):
    run = tmp_path / "ft"
    out = fp_train(*_from_pretrained(store, pretrained, run), "--epochs", "2", *TINY)
    assert "init: " in out.stdout
    pre = load_checkpoint(pretrained / "best.pt")["model"]
    # at initialisation every representation tensor and the head's hidden layers come across;
    # the last layer is re-initialised
    from fingerprint_pretrain.trainer.train import build_model, transfer_weights

    model = build_model(tiny("finetune", store=str(store), labels=["band_gap"]), 1)
    copied = transfer_weights(model, pre)
    assert all(k in copied for k in pre if k.startswith("representation."))
    assert not any(k.startswith("head.out.") for k in copied)
    assert "head.lin1.weight" in copied
    result = json.loads((run / "result.json").read_text())
    rows = list(csv.DictReader(open(run / "test_predictions.csv")))
    assert len(rows) == result["test_structures"] == 8  # 0.2 of 40
    truth = {r["id"]: r["targets"][0] for r in open_store(store)}
    preds = np.array([float(r["prediction_band_gap"]) for r in rows])
    targets = np.array([float(r["target_band_gap"]) for r in rows])
    np.testing.assert_allclose(targets, [truth[r["id"]] for r in rows], rtol=1e-6)
    assert result["test_mae"] == pytest.approx(np.abs(preds - targets).mean(), rel=1e-5)
    # evaluate recomputes the same MAE from the checkpoint
    ev = fp_train("evaluate", "--checkpoint", run / "best.pt", "--out", tmp_path / "p.csv")
    assert f"MAE {result['test_mae']:.6g}" in ev.stdout
    # from scratch: a different model, same split
    scratch = tmp_path / "scratch"
    fp_train(
        "finetune", "--store", store, "-t", "band_gap", "--run-dir", scratch, "--epochs", "2", *TINY
    )
    np.testing.assert_array_equal(
        np.load(scratch / "splits.npz")["test"], np.load(run / "splits.npz")["test"]
    )


def test_embed_writes_one_row_per_structure(pretrained, store, tmp_path):
    out = tmp_path / "emb.npz"
    fp_train("embed", "--checkpoint", pretrained / "best.pt", "--store", store, "--out", out)
    data = np.load(out)
    assert data["embeddings"].shape == (40, 16)
    assert data["ids"].tolist() == [r["id"] for r in open_store(store)]


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.slow
def test_kill_9_and_resume_equals_an_uninterrupted_run(store, tmp_path):
    args = [
        "pretrain",
        "--store",
        store,
        "-d",
        "wacsfset1",
        "--epochs",
        "6",
        "--batch-size",
        "4",
        *TINY,
    ]
    fp_train(*args, "--run-dir", tmp_path / "full")
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fingerprint_pretrain.trainer.cli",
            *map(str, args),
            "--run-dir",
            str(run),
        ],
        start_new_session=True,
    )
    kill_when(proc, run / "last.pt", 1)
    killed_at = load_checkpoint(run / "last.pt")["epoch"]
    assert killed_at < 5
    fp_train(*args, "--run-dir", run, "--resume")
    full, resumed = _weights(tmp_path / "full" / "last.pt"), _weights(run / "last.pt")
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))


def test_non_finite_loss_stops_with_a_clear_message(store, tmp_path, monkeypatch):
    import fingerprint_pretrain.trainer.train as t

    calls = {"n": 0}
    real = t._l1

    def poisoned(pred, y):
        calls["n"] += 1
        loss = real(pred, y)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(t, "_l1", poisoned)
    cfg = tiny(
        "pretrain", store=str(store), labels=["wacsfset1"], run_dir=str(tmp_path / "nan"), epochs=2
    )
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at epoch 1, step 3"):
        train(cfg)


def test_refuses_a_store_of_an_unknown_schema(store, tmp_path):
    copy = tmp_path / "future.lmdb"
    shutil.copytree(store, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = "3.0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = fp_train(
        "finetune",
        "--store",
        copy,
        "-t",
        "band_gap",
        "--run-dir",
        tmp_path / "r",
        *TINY,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("fp-train: error:")
    assert "schema_version 3.0" in result.stderr and "Traceback" not in result.stderr


def test_architecture_mismatch_with_init_is_refused(pretrained, store, tmp_path):
    result = fp_train(
        *_from_pretrained(store, pretrained, tmp_path / "r"),
        *[
            ("32" if a == "16" and TINY[k - 1] == "--hidden-channels" else a)
            for k, a in enumerate(TINY)
        ],
        check=False,
    )
    # a model flag that differs from the checkpoint's: a usage error naming both values
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "hidden_channels 16" in result.stderr and "--hidden-channels 32" in result.stderr


@pytest.mark.slow
def test_two_process_ddp_on_cpu_with_gloo(store, tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "fingerprint_pretrain.trainer.cli",
        "pretrain",
        "--store",
        str(store),
        "-d",
        "wacsfset1",
        "--run-dir",
        str(run),
        "--epochs",
        "2",
        "--device",
        "cpu",
        *TINY,
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 2
    # each rank takes half of the 32 training structures per epoch: 16 at batch 8 = 2 steps
    assert int(rows[0]["steps"]) == 2
    assert (run / "result.json").exists()


def test_yaml_config_with_flag_overrides_and_matbench_fold(store, tmp_path):
    config = tmp_path / "ft.yaml"
    config.write_text(
        "epochs: 1\nbatch-size: 4\nhidden_channels: 16\nnum_layers: 1\nnum_rbf: 8\n"
        "num_heads: 2\nhead_channels: 16\nnum_workers: 0\nprogress: false\nfold: 2\n"
        "lr: 0.5\n"
    )
    run = tmp_path / "yaml"
    fp_train(
        "finetune",
        "--config",
        config,
        "--store",
        store,
        "-t",
        "band_gap",
        "--run-dir",
        run,
        "--lr",
        "0.001",
    )
    saved = json.loads((run / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["batch_size"] == 4 and saved["fold"] == 2
    assert saved["lr"] == 0.001  # the flag wins over the file
    from fingerprint_pretrain.schemas.splits import kfold_splits

    splits = np.load(run / "splits.npz")
    _, test = kfold_splits(40)[2]
    np.testing.assert_array_equal(splits["test"], test)
    assert not set(splits["val"]) & set(splits["train"]) and len(splits["val"]) == 3
    assert sorted(np.concatenate([splits[k] for k in ("train", "val", "test")])) == list(range(40))
