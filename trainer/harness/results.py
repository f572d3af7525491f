"""A sweep's finished runs as rows, and the statistics the report computes over them.

Reads what the trainer leaves in each run directory (``result.json``, ``metrics.csv``,
``splits.npz``, ``test_predictions.csv``); the directory layout is the sweep's
(:mod:`trainer.harness.sweep`): ``RUNS/finetune/<task>/n<size|all>/<init>[-e<epoch>]/seed<seed>/``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

__all__ = [
    "ablation_points",
    "adaptation",
    "best_pretrain_epoch",
    "collect",
    "improvement",
    "mean_std",
    "paired_p",
    "read_metrics",
    "read_plan",
    "read_test_predictions",
]


def collect(runs_dir: str | Path) -> list[dict]:
    """One row per finished fine-tuning run: task, n, init, pretrain_epoch, seed, test_mae,
    n_train, run_dir, and ``adapted`` (:func:`adaptation`: None unless the run was task-adapted
    first)."""
    rows = []
    base = Path(runs_dir) / "finetune"
    for result in sorted(base.glob("*/*/*/seed*/result.json")):
        run = result.parent
        task, size, name, seed = run.parts[-4:]
        init, _, epoch = name.partition("-e")
        result_json = json.loads(result.read_text())
        rows.append(
            {
                "task": task,
                "n": None if size == "nall" else int(size[1:]),
                "init": None if init == "none" else init,
                "pretrain_epoch": int(epoch) if epoch else None,
                "seed": int(seed[4:]),
                "test_mae": result_json["test_mae"],
                "n_train": _train_count(run),
                "run_dir": run,
                "adapted": adaptation(run, result_json),
            }
        )
    return rows


def adaptation(run_dir: Path, result: dict) -> dict | None:
    """The task-adaptive pre-training a fine-tuning run did first (``--adapt-epochs``): the
    ``adapted`` entry of its ``result.json`` (``result``), else its ``adapt/adapted.json``;
    None when it did none. Keys include ``seconds`` (wall s), ``epochs``, ``structures``, ``on``."""
    if result.get("adapted"):
        return result["adapted"]
    path = run_dir / "adapt" / "adapted.json"
    return json.loads(path.read_text()) if path.exists() else None


def _train_count(run_dir: Path) -> int | None:
    """Training structures the run used (its saved split), None when it saved none."""
    path = run_dir / "splits.npz"
    if not path.exists():
        return None
    with np.load(path) as splits:
        return len(splits["train"])


def best_pretrain_epoch(pretrain_dir: Path) -> int | None:
    """The epoch whose weights are ``best.pt``: lowest validation loss in ``metrics.csv``
    (the first on ties, as the trainer keeps the first improvement)."""
    path = pretrain_dir / "metrics.csv"
    if not path.exists():
        return None
    m = read_metrics(path)
    return int(m["epoch"][np.argmin(m["val_loss"])])  # argmin: the first of equal minima


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (0 for one value), count) of ``values``."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, len(arr)


def improvement(baseline: float, value: float) -> float:
    """% lower MAE than the baseline (positive = better)."""
    return 100.0 * (baseline - value) / baseline


def paired_p(baseline: list[float], pretrained: list[float]) -> float | None:
    """Two-sided paired t-test p-value of the per-seed MAE differences (each seed is one
    split, shared by both); None with fewer than 3 pairs or identical values."""
    if len(baseline) < 3:
        return None
    from scipy.stats import ttest_rel

    p = float(ttest_rel(baseline, pretrained).pvalue)
    return None if np.isnan(p) else p


def ablation_points(rows: list[dict], runs_dir: Path) -> dict:
    """Epoch ablation, paired by seed: ``{(task, n): {init: {epoch: [test MAE]}}}``.

    For each task and training-set size with ablation runs, on the seeds of those runs:
    epoch 0 = the from-scratch baseline, each ablation epoch, and the best pre-training
    checkpoint at the epoch it was saved (``best_pretrain_epoch``)."""
    ablation = [r for r in rows if r["pretrain_epoch"] is not None]
    points: dict = {}
    keys = sorted({(r["task"], r["n"]) for r in ablation}, key=lambda k: (k[0], k[1] or 1e18))
    for task, n in keys:
        sub = [r for r in ablation if r["task"] == task and r["n"] == n]
        seeds = {r["seed"] for r in sub}
        same = [r for r in rows if r["task"] == task and r["n"] == n and r["seed"] in seeds]
        table = points.setdefault((task, n), {})
        for r in sub:
            table.setdefault(r["init"], {}).setdefault(r["pretrain_epoch"], []).append(
                r["test_mae"]
            )
        for init in list(table):
            best = best_pretrain_epoch(runs_dir / "pretrain" / init)
            if best in table[init]:  # best.pt is that epoch's checkpoint: already there
                best = None
            for r in same:
                if r["pretrain_epoch"] is None and r["init"] in (None, init):
                    epoch = 0 if r["init"] is None else best
                    if epoch is not None:
                        table[init].setdefault(epoch, []).append(r["test_mae"])
    return points


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    """A run's ``metrics.csv`` as column name -> (epochs,) float array."""
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def read_test_predictions(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(targets, predictions), each (R,): columns 2 and 3 of a one-target run's
    ``test_predictions.csv``."""
    with open(run_dir / "test_predictions.csv") as fh:
        rows = list(csv.reader(fh))
    data = np.array([[float(v) for v in r[1:3]] for r in rows[1:]])
    return data[:, 0], data[:, 1]


def read_plan(runs_dir: Path) -> dict:
    """The plan a sweep saved in its runs folder (``plan.yaml``); {} when there is none."""
    path = runs_dir / "plan.yaml"
    if not path.exists():
        return {}
    import yaml

    return yaml.safe_load(path.read_text()) or {}
