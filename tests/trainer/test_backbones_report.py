"""trainer/harness/backbones.py and ``fp-train report-backbones``: gains against hand-computed
values on two small fake sweeps (result.json, config.json and metrics.csv as the trainer
writes them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fingerprint_pretrain.trainer.cli import main
from fingerprint_pretrain.trainer.harness.backbones import backbone_rows, model_of
from scipy import stats


def _run(root: Path, task: str, size: str, init: str, seed: int, mae: float, model) -> None:
    run = root / "finetune" / task / size / init / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"test_mae": mae}))
    config = {"mode": "finetune"} if model is None else {"mode": "finetune", "model": model}
    (run / "config.json").write_text(json.dumps(config))


def _sweep(root: Path, model, maes: dict, val_losses=None) -> Path:
    for (task, size, init, seed), mae in maes.items():
        _run(root, task, size, init, seed, mae, model)
    if val_losses:
        pre = root / "pretrain" / "eadset1"
        pre.mkdir(parents=True)
        rows = ["epoch,train_loss,val_loss,val_mae,lr,seconds,steps"]
        rows += [f"{e + 1},1.0,{v},1.0,0.001,30.0,7" for e, v in enumerate(val_losses)]
        (pre / "metrics.csv").write_text("\n".join(rows) + "\n")
        (pre / "config.json").write_text(json.dumps({"mode": "pretrain", "model": model}))
    return root


@pytest.fixture()
def sweeps(tmp_path):
    # An ET sweep from before --model (config.json without "model"), and a PaiNN sweep.
    et = _sweep(
        tmp_path / "et",
        None,
        {
            ("jdft2d", "nall", "none", 1): 50.0,
            ("jdft2d", "nall", "none", 2): 60.0,
            ("jdft2d", "nall", "none", 3): 70.0,
            ("jdft2d", "nall", "eadset1", 1): 40.0,
            ("jdft2d", "nall", "eadset1", 2): 45.0,
            ("jdft2d", "nall", "eadset1", 3): 75.0,
            ("c2db", "n250", "none", 1): 1.0,
            ("c2db", "n250", "eadset1", 1): 0.5,
        },
    )
    painn = _sweep(
        tmp_path / "painn",
        "painn",
        {
            ("jdft2d", "nall", "none", 1): 100.0,
            ("jdft2d", "nall", "none", 2): 100.0,
            ("jdft2d", "nall", "eadset1", 1): 90.0,
            ("jdft2d", "nall", "eadset1", 2): 80.0,
            ("jdft2d", "nall", "eadset1", 3): 10.0,  # no baseline for seed 3: not paired
        },
        val_losses=[0.5, 0.3, 0.4],
    )
    return et, painn


def test_rows_have_each_backbones_own_gain(sweeps):
    et, painn = sweeps
    rows = backbone_rows([et, painn], ["eadset1", "gmpset1"])
    assert [(r["model"], r["init"]) for r in rows] == [("et", "eadset1"), ("painn", "eadset1")]
    g = rows[0]["gains"][("jdft2d", None)]
    # baseline mean 60, pre-trained mean 160/3: 100 * (60 - 53.33) / 60
    assert g["gain"] == pytest.approx(100 * (60 - 160 / 3) / 60)
    assert (g["wins"], g["seeds"]) == (2, 3)
    assert g["p"] == pytest.approx(stats.ttest_rel([50, 60, 70], [40, 45, 75]).pvalue)
    assert g["baseline"] == pytest.approx(60.0) and g["pretrained"] == pytest.approx(160 / 3)
    g = rows[1]["gains"][("jdft2d", None)]
    assert g["gain"] == pytest.approx(15.0) and (g["wins"], g["seeds"]) == (2, 2)
    assert g["p"] is None  # fewer than 3 pairs
    pre = rows[1]["pretraining"]
    assert (pre["epochs"], pre["best_epoch"], pre["best_val_loss"]) == (3, 2, 0.3)
    assert pre["seconds"] == pytest.approx(90.0)
    assert rows[0]["pretraining"]["epochs"] is None


def test_model_of_reads_the_config_and_defaults_to_et(sweeps):
    et, painn = sweeps
    assert model_of(et, "eadset1") == "et"
    assert model_of(painn, "eadset1") == "painn"
    with pytest.raises(FileNotFoundError, match="wacsfset1"):
        model_of(painn, "wacsfset1")


def test_cli_writes_common_points_and_lists_the_others(sweeps, tmp_path, capsys):
    et, painn = sweeps
    out = tmp_path / "docs" / "backbones.md"
    assert (
        main(["report-backbones", str(et), str(painn), "--init", "eadset1", "--out", str(out)]) == 0
    )
    text = out.read_text()
    table = [line for line in text.splitlines() if line.startswith("| `")]
    assert "jdft2d full" in text and "| `painn` | eadset1 | 3 ep, best val 0.300, 1.5 min |" in text
    assert "+15.0 (2/2)" in table[1]
    assert f"{100 * (60 - 160 / 3) / 60:+.1f} (2/3" in table[0]
    assert "- c2db 250: et eadset1: +50.0 (1/1)" in text  # only the ET sweep has it
    assert "c2db 250 |" not in text


def test_cli_without_any_paired_run_is_a_one_line_error(sweeps, capsys):
    et, _ = sweeps
    assert main(["report-backbones", str(et), "--init", "gmpset1", "--out", "x.md"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fp-train: error: no paired fine-tuning runs from gmpset1")
    assert err.count("\n") == 1
