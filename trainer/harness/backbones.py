"""Does fingerprint pre-training transfer across backbones? One table over several sweeps.

Each sweep (a runs directory, :mod:`fingerprint_pretrain.trainer.harness.sweep`) pre-trained
one backbone (``--model``: et, schnet, painn) on some label sets and fine-tuned it from those
and from scratch on the same tasks, seeds and splits. :func:`backbone_rows` gives one row per
(sweep, label set): the backbone, its pre-training (epochs, best validation loss, wall time)
and, per task point, the gain over **that backbone's own** from-scratch runs, paired by seed.
``fp-train report-backbones RUNS_DIR ... --init SET ...`` writes the tables
(:func:`write_backbone_report`).

Backbones are compared through their gains only: each has its own baseline, capacity and
speed, so raw MAEs across rows are context, not the result.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from fingerprint_pretrain.trainer.harness.results import best_pretrain_epoch, collect, read_metrics
from fingerprint_pretrain.trainer.harness.scale import (
    common_points,
    gain_cell,
    paired_gains,
    point_name,
    point_order,
)

__all__ = ["backbone_rows", "backbone_tables", "model_of", "write_backbone_report"]


def model_of(runs_dir: Path, init: str) -> str:
    """The backbone a sweep trained for ``init``: ``model`` of the ``config.json`` of its
    pre-training run, else of its first fine-tuning run from ``init``; ``"et"`` when the
    config predates ``--model`` (the ET was then the only backbone).

    Raises:
        FileNotFoundError: no run of ``init`` in ``runs_dir``.
    """
    candidates = [runs_dir / "pretrain" / init / "config.json"]
    candidates += sorted((runs_dir / "finetune").glob(f"*/*/{init}/seed*/config.json"))
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text()).get("model") or "et"
    raise FileNotFoundError(f"{runs_dir}: no run of {init} (no config.json)")


def _pretraining(pre: Path) -> dict:
    """Epochs, best validation loss (standardised label units) and wall seconds of the
    pre-training run ``pre`` (its ``metrics.csv``); Nones when it is absent."""
    path = pre / "metrics.csv"
    if not path.is_file():
        return {"epochs": None, "best_epoch": None, "best_val_loss": None, "seconds": None}
    m = read_metrics(path)
    return {
        "epochs": int(m["epoch"].max()),
        "best_epoch": best_pretrain_epoch(pre),
        "best_val_loss": float(np.min(m["val_loss"])),
        "seconds": float(np.sum(m["seconds"])) if "seconds" in m else None,
    }


def backbone_rows(runs_dirs: list[str | Path], inits: list[str]) -> list[dict]:
    """One row per sweep and label set of ``inits`` that it fine-tuned from: ``runs_dir``,
    ``model``, ``init``, ``pretraining`` (:func:`_pretraining`) and ``gains`` (as
    :func:`~.scale.paired_gains`: per (task, n), gain %, wins, seeds, p and both mean MAEs).

    Raises:
        ValueError: no sweep fine-tuned from any of ``inits``.
    """
    rows = []
    for runs_dir in map(Path, runs_dirs):
        runs = collect(runs_dir)
        for init in inits:
            gains = paired_gains(runs, init)
            if not gains:
                continue
            rows.append(
                {
                    "runs_dir": runs_dir,
                    "model": model_of(runs_dir, init),
                    "init": init,
                    "pretraining": _pretraining(runs_dir / "pretrain" / init),
                    "gains": gains,
                }
            )
    if not rows:
        where = ", ".join(map(str, runs_dirs))
        raise ValueError(f"no paired fine-tuning runs from {', '.join(inits)} in {where}")
    return rows


def backbone_tables(rows: list[dict]) -> list[str]:
    """Markdown lines: the gain table (one row per backbone and label set, one column per task
    point every row finished, cells "gain % (wins/seeds, p)", their average), then the mean
    test MAEs behind it (from scratch → pre-trained), then points not every row finished."""
    common = common_points(rows)
    head = ["backbone", "label set", "pre-training", *map(point_name, common), "average"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        pre = r["pretraining"]
        if pre["epochs"] is None:
            cost = "–"
        else:
            minutes = "" if pre["seconds"] is None else f", {pre['seconds'] / 60:.1f} min"
            cost = f"{pre['epochs']} ep, best val {pre['best_val_loss']:.3f}{minutes}"
        cells = [f"`{r['model']}`", r["init"], cost]
        cells += [gain_cell(r["gains"][key]) for key in common]
        avg = np.mean([r["gains"][k]["gain"] for k in common]) if common else float("nan")
        cells.append(f"{avg:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean test MAE over the paired seeds, from scratch → pre-trained (task units):",
        "",
        "| backbone | label set | " + " | ".join(map(point_name, common)) + " |",
        "|" + "---|" * (2 + len(common)),
    ]
    for r in rows:
        cells = [f"`{r['model']}`", r["init"]]
        for key in common:
            g = r["gains"][key]
            cells.append(f"{g['baseline']:.4g} → {g['pretrained']:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    others = sorted({k for r in rows for k in r["gains"]} - set(common), key=point_order)
    if others:
        lines += ["", "Points not finished by every row (gain %, wins/seeds):", ""]
        for key in others:
            have = [
                f"{r['model']} {r['init']}: {r['gains'][key]['gain']:+.1f} "
                f"({r['gains'][key]['wins']}/{r['gains'][key]['seeds']})"
                for r in rows
                if key in r["gains"]
            ]
            lines.append(f"- {point_name(key)}: {'; '.join(have)}")
    return lines


def write_backbone_report(
    runs_dirs: list[str | Path], inits: list[str], target: str | Path
) -> Path:
    """Write :func:`backbone_tables` of :func:`backbone_rows` to ``target`` (a ``.md`` file,
    or a folder that gets ``report.md``); returns the file written."""
    target = Path(target)
    report = target if target.suffix == ".md" else target / "report.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    rows = backbone_rows(runs_dirs, inits)
    sweeps = ", ".join(f"`{d}`" for d in dict.fromkeys(str(r["runs_dir"]) for r in rows))
    lines = [
        "# Fine-tuning gain from fingerprint pre-training, per backbone",
        "",
        f"Sweeps: {sweeps}. Gain = % lower mean test MAE than the same backbone's from-scratch "
        "runs in the same sweep, over the seeds both finished (wins: seeds where the "
        "pre-trained model is better; p: two-sided paired t-test). Pre-training: epochs run, "
        "the best validation loss (standardised label units; comparable across rows only on "
        "the same store and label set) and the wall time of all its epochs.",
        "",
        *backbone_tables(rows),
        "",
    ]
    report.write_text("\n".join(lines))
    return report
