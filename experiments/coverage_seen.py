"""Coverage follow-ups: is the gain from adding a structure type to the pre-training set about
the type, or about the test structures whose descriptor labels pre-training saw?

The mixed pre-training stores (``experiments/perov_mix_store.py``, ``c2db_mix_store.py``) hold
2,485 of the fine-tuning structures (a third of the perovskites, two thirds of C2DB), so part of
every fine-tuning test set had its descriptor labels (never its target) in pre-training. This
script splits each run's test predictions into those structures ("seen") and the rest
("unseen") and compares, seed by seed on the same splits, the test MAE of every pre-trained
model with the from-scratch baseline on each part. If pre-training helps only on the seen part,
the gain is memorised structures; if it helps on the unseen part too, it is the structure type.

Usage: python experiments/coverage_seen.py [perovskites|c2db] [--size 1000|250] [--runs DIR]
Prints a markdown table (test MAE, mean over seeds; % change against from scratch, seeds
better, paired t-test p).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from fingerprint_pretrain.builder.datasets.download import data_home
from fingerprint_pretrain.trainer.harness.results import paired_p

SEEDS = (111, 222, 333, 444, 555)
LABELS = ("eadset1", "gmpset1", "wacsfset1")
# task -> where the pre-training ids are, their prefix, the target column, and the models:
# (runs folder, model folder, what it is); the baselines are each folder's own "none"
TASKS = {
    "perovskites": {
        "ids": ("mp20_perov5mix.csv.gz", "castelli-"),
        "target": "heat_all",
        "models": (
            ("cpu-small", "{label}", "MP only, 30 epochs"),
            ("perov-mponly60", "{label}", "MP only, 60 epochs"),
            ("perov-mix", "{label}-e15", "MP + perovskites, 15 epochs"),
            ("perov-mix", "{label}", "MP + perovskites, 30 epochs"),
        ),
        "baseline": "perov-mix",
    },
    "c2db": {
        "ids": ("mp20_c2dbmix.c2db.json", "c2db-"),
        "target": "y",
        "models": (
            ("cpu-small", "{label}", "MP only, 30 epochs"),
            ("c2db-mix", "{label}", "MP + C2DB, 30 epochs"),
        ),
        "baseline": "c2db-mix",
    },
}


def pretrain_ids(path: Path, prefix: str) -> set[str]:
    """Ids (as the fine-tuning store has them) of the structures in the pre-training input."""
    if path.name.endswith(".csv.gz"):
        ids = pd.read_csv(path)["material_id"].astype(str)
    else:
        ids = [str(r["structure_id"]) for r in json.loads(path.read_text())]
    return {i.removeprefix(prefix) for i in ids if i.startswith(prefix)}


def part_maes(run_dir: Path, seen: set[str], target: str) -> tuple[float, float, str]:
    """Test MAE on the seen and on the unseen test structures of one run, and "seen/all"."""
    pred = pd.read_csv(run_dir / "test_predictions.csv")
    err = (pred[f"prediction_{target}"] - pred[f"target_{target}"]).abs().to_numpy()
    is_seen = pred["id"].astype(str).isin(seen).to_numpy()
    return float(err[is_seen].mean()), float(err[~is_seen].mean()), f"{is_seen.sum()}/{len(err)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", nargs="?", default="perovskites", choices=sorted(TASKS))
    parser.add_argument("--runs", default="experiments/runs")
    parser.add_argument("--size", type=int, default=1000, help="training-set size of the runs")
    parser.add_argument("--stores", default=str(data_home() / "stores"))
    args = parser.parse_args()
    spec = TASKS[args.task]
    name, prefix = spec["ids"]
    seen = pretrain_ids(Path(args.stores) / name, prefix)
    target = spec["target"]
    runs = Path(args.runs)
    task = Path(f"finetune/{args.task}/n{args.size}")
    print(f"{len(seen)} {args.task} structures in the pre-training set\n")
    print(
        "| pre-training | label set | seen: MAE | vs scratch | better | p "
        "| unseen: MAE | vs scratch | better | p |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for folder, model, what in spec["models"]:
        base_dirs = [runs / folder / task / "none" / f"seed{s}" for s in SEEDS]
        if not all((d / "test_predictions.csv").exists() for d in base_dirs):
            continue
        base = [part_maes(d, seen, target) for d in base_dirs]
        for label in LABELS:
            dirs = [runs / folder / task / model.format(label=label) / f"seed{s}" for s in SEEDS]
            if not all((d / "test_predictions.csv").exists() for d in dirs):
                continue
            pre = [part_maes(d, seen, target) for d in dirs]
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
    base_dirs = [runs / spec["baseline"] / task / "none" / f"seed{s}" for s in SEEDS]
    base = [part_maes(d, seen, target) for d in base_dirs]
    seen_mae, unseen_mae = np.mean([m[0] for m in base]), np.mean([m[1] for m in base])
    print(f"\nseen test structures per seed: {', '.join(m[2] for m in base)}")
    print(f"from scratch: seen {seen_mae:.4f}, unseen {unseen_mae:.4f}")


if __name__ == "__main__":
    main()
