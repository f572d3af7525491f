"""Perovskite follow-up: is the gain from pre-training on perovskites about the structure type,
or about the test structures whose descriptor labels pre-training saw?

The mixed pre-training store (``experiments/perov_mix_store.py``) holds 2,485 of the 7,572
perovskites, so about a third of every fine-tuning test set had its descriptor labels (never its
heat of formation) in pre-training. This script splits each run's test predictions into those
structures ("seen") and the rest ("unseen") and compares, seed by seed on the same splits, the
test MAE of every pre-trained model with the from-scratch baseline on each part. If pre-training
on perovskites helps only on the seen part, the gain is memorised structures; if it helps on
the unseen part too, it is the structure type.

Usage: python experiments/perov_mix_seen.py [--size 1000|250] [--runs DIR] [--store-csv CSV]
Prints a markdown table (test MAE, eV/cell, mean over seeds; % change against from scratch,
seeds better, paired t-test p).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from builder.datasets.download import data_home
from trainer.report import paired_p

SEEDS = (111, 222, 333, 444, 555)
# (runs folder, model folder, what it is); the baselines are each folder's own "none"
MODELS = (
    ("cpu-small", "{label}", "MP only, 30 epochs"),
    ("perov-mponly60", "{label}", "MP only, 60 epochs"),
    ("perov-mix", "{label}-e15", "MP + perovskites, 15 epochs"),
    ("perov-mix", "{label}", "MP + perovskites, 30 epochs"),
)
LABELS = ("eadset1", "gmpset1", "wacsfset1")


def part_maes(run_dir: Path, seen: set[int]) -> tuple[float, float, str]:
    """Test MAE on the seen and on the unseen test structures of one run, and "seen/all"."""
    pred = pd.read_csv(run_dir / "test_predictions.csv")
    err = (pred["prediction_heat_all"] - pred["target_heat_all"]).abs().to_numpy()
    is_seen = pred["id"].isin(seen).to_numpy()
    return float(err[is_seen].mean()), float(err[~is_seen].mean()), f"{is_seen.sum()}/{len(err)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="experiments/runs")
    parser.add_argument("--size", type=int, default=1000, help="training-set size of the runs")
    parser.add_argument(
        "--store-csv", default=str(data_home() / "stores" / "mp20_perov5mix.csv.gz")
    )
    args = parser.parse_args()
    ids = pd.read_csv(args.store_csv)["material_id"].astype(str)
    seen = {int(i.removeprefix("castelli-")) for i in ids if i.startswith("castelli-")}
    runs = Path(args.runs)
    task = Path(f"finetune/perovskites/n{args.size}")
    print(f"{len(seen)} perovskites in the pre-training store\n")
    print(
        "| pre-training | label set | seen: MAE | vs scratch | better | p "
        "| unseen: MAE | vs scratch | better | p |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for folder, model, what in MODELS:
        base_dirs = [runs / folder / task / "none" / f"seed{s}" for s in SEEDS]
        if not all((d / "test_predictions.csv").exists() for d in base_dirs):
            continue
        base = [part_maes(d, seen) for d in base_dirs]
        for label in LABELS:
            dirs = [runs / folder / task / model.format(label=label) / f"seed{s}" for s in SEEDS]
            if not all((d / "test_predictions.csv").exists() for d in dirs):
                continue
            pre = [part_maes(d, seen) for d in dirs]
            cells = []
            for part in (0, 1):
                b = [m[part] for m in base]
                p = [m[part] for m in pre]
                change = 100 * (np.mean(p) - np.mean(b)) / np.mean(b)
                wins = sum(y < x for x, y in zip(b, p))
                cells += [
                    f"{np.mean(p):.4f}",
                    f"{change:+.1f} %",
                    f"{wins}/{len(SEEDS)}",
                    f"{paired_p(b, p):.3f}",
                ]
            print(f"| {what} | {label} | " + " | ".join(cells) + " |")
    base = [part_maes(runs / "perov-mix" / task / "none" / f"seed{s}", seen) for s in SEEDS]
    seen_mae, unseen_mae = np.mean([m[0] for m in base]), np.mean([m[1] for m in base])
    print(f"\nseen test structures per seed: {', '.join(m[2] for m in base)}")
    print(f"from scratch: seen {seen_mae:.4f}, unseen {unseen_mae:.4f} eV/cell")


if __name__ == "__main__":
    main()
