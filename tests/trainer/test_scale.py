"""trainer/harness/scale.py and ``fp-train report-scale``: gains against hand-computed values on
two small fake sweeps (result.json, splits.npz and metrics.csv as the trainer writes them)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from fingerprint_pretrain.trainer.cli import main
from fingerprint_pretrain.trainer.harness.scale import scale_points, scale_table
from scipy import stats


def _run(root: Path, task: str, size: str, init: str, seed: int, mae: float) -> None:
    run = root / "finetune" / task / size / init / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"test_mae": mae}))


def _sweep(root: Path, structures: int, val_losses: list[float], maes: dict) -> Path:
    pre = root / "pretrain" / "wacsfset1"
    pre.mkdir(parents=True)
    np.savez(pre / "splits.npz", train=np.arange(structures), val=np.arange(3), test=np.arange(2))
    rows = ["epoch,train_loss,val_loss,val_mae,lr,seconds,steps"]
    rows += [f"{e + 1},1.0,{v},1.0,0.001,1.0,7" for e, v in enumerate(val_losses)]
    (pre / "metrics.csv").write_text("\n".join(rows) + "\n")
    for (task, size, init, seed), mae in maes.items():
        _run(root, task, size, init, seed, mae)
    return root


@pytest.fixture()
def sweeps(tmp_path):
    big = _sweep(
        tmp_path / "big",
        5000,
        [0.5, 0.3, 0.4],  # best epoch 2: 14 steps
        {
            ("jdft2d", "nall", "none", 111): 10.0,
            ("jdft2d", "nall", "none", 222): 10.0,
            ("jdft2d", "nall", "none", 333): 12.0,
            ("jdft2d", "nall", "wacsfset1", 111): 8.0,
            ("jdft2d", "nall", "wacsfset1", 222): 11.0,
            ("jdft2d", "nall", "wacsfset1", 333): 9.0,
            ("jdft2d", "nall", "wacsfset1-e5", 111): 1.0,  # an epoch-ablation run: left out
            ("c2db", "n250", "none", 111): 2.0,
            ("c2db", "n250", "wacsfset1", 111): 1.0,
        },
    )
    small = _sweep(
        tmp_path / "small",
        100,
        [0.2, 0.3],  # best epoch 1: 7 steps
        {
            ("jdft2d", "nall", "none", 111): 20.0,
            ("jdft2d", "nall", "none", 222): 20.0,
            ("jdft2d", "nall", "wacsfset1", 111): 22.0,
            ("jdft2d", "nall", "wacsfset1", 222): 20.0,
            ("jdft2d", "nall", "wacsfset1", 333): 1.0,  # no baseline for this seed: unpaired
        },
    )
    return big, small


def test_points_are_sorted_by_structures_with_hand_computed_gains(sweeps):
    big, small = sweeps
    points = scale_points([big, small], "wacsfset1")
    assert [p["structures"] for p in points] == [100, 5000]
    assert [p["steps"] for p in points] == [7, 14]
    assert [p["best_epoch"] for p in points] == [1, 2]
    small_gain = points[0]["gains"][("jdft2d", None)]
    assert small_gain["seeds"] == 2 and small_gain["wins"] == 0
    assert small_gain["gain"] == pytest.approx(100 * (20 - 21) / 20)
    big_gain = points[1]["gains"][("jdft2d", None)]
    assert big_gain["gain"] == pytest.approx(100 * (32 / 3 - 28 / 3) / (32 / 3))
    assert big_gain["wins"] == 2 and big_gain["seeds"] == 3
    d = np.array([2.0, -1.0, 3.0])  # baseline - pre-trained, per seed
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert big_gain["p"] == pytest.approx(2 * stats.t.sf(abs(t), df=2))
    assert points[1]["gains"][("c2db", 250)]["gain"] == pytest.approx(50.0)


def test_table_has_common_points_and_lists_the_others(sweeps):
    lines = scale_table(scale_points(list(sweeps), "wacsfset1"), "wacsfset1")
    assert lines[0] == "| pre-training structures | optimiser steps | jdft2d full | average |"
    assert lines[2].startswith("| 100 | 7 | -5.0 (0/2) | -5.0 |")
    assert lines[3].startswith("| 5,000 | 14 | +12.5 (2/3, p=")
    assert "- c2db 250: 5,000: +50.0 (1/1)" in lines


def test_cli_writes_report_and_figure(sweeps, tmp_path):
    out = tmp_path / "docs" / "scale.md"
    assert main(["report-scale", *map(str, sweeps), "--init", "wacsfset1", "--out", str(out)]) == 0
    assert "| 5,000 | 14 |" in out.read_text()
    assert (tmp_path / "docs" / "scale" / "gain_vs_pretraining_size.png").stat().st_size > 1000


def test_a_sweep_without_that_pretraining_is_named(sweeps, capsys):
    assert main(["report-scale", str(sweeps[0]), "--init", "gmpset1", "--out", "/tmp/x.md"]) == 1
    assert "pretrain/gmpset1: no pre-training run of gmpset1" in capsys.readouterr().err
