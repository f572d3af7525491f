"""Fine-tuning gain against the size of the pre-training set, across several sweeps.

Each sweep (a runs directory, :mod:`fingerprint_pretrain.trainer.harness.sweep`) pre-trained one
label set on some number of structures and fine-tuned from it and from scratch on the same
tasks, seeds and splits. :func:`scale_points` reads, per sweep, how many structures the
pre-training trained on (its saved split), how many optimiser steps led to the weights that
were carried (``best.pt``), and, per task and training size, the gain over that sweep's own
from-scratch baseline, paired by seed. ``fp-train report-scale RUNS_DIR ... --init SET`` writes
the table and a figure (:func:`write_scale_report`).

Gains are always against the baseline of the same sweep: sweeps run on different machines or
precisions are compared through their gains, never through raw MAEs.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from fingerprint_pretrain.trainer.harness.figures import report_paths
from fingerprint_pretrain.trainer.harness.results import (
    best_pretrain_epoch,
    collect,
    improvement,
    paired_p,
    read_metrics,
)

__all__ = [
    "common_points",
    "gain_cell",
    "paired_gains",
    "point_name",
    "point_order",
    "scale_figure",
    "scale_points",
    "scale_table",
    "write_scale_report",
]


def scale_points(runs_dirs: list[str | Path], init: str) -> list[dict]:
    """One entry per sweep, sorted by pre-training structures.

    Returns dicts with ``runs_dir``, ``structures`` (training structures of the pre-training
    run ``RUNS/pretrain/<init>``), ``steps`` (optimiser steps up to its best epoch, None when
    its metrics.csv has no ``steps`` column), ``best_epoch`` and ``gains``:
    ``{(task, n): {"gain": % lower mean MAE than from scratch, "wins": seeds where the
    pre-trained run beat the baseline, "seeds": paired seeds, "p": paired t-test p or None}}``
    over the seeds both inits finished (``n`` None = the task's full training split).

    Raises:
        FileNotFoundError: a sweep without the pre-training run of ``init``.
    """
    points = []
    for runs_dir in map(Path, runs_dirs):
        pre = runs_dir / "pretrain" / init
        if not (pre / "splits.npz").is_file():
            raise FileNotFoundError(f"{pre}: no pre-training run of {init} (splits.npz missing)")
        with np.load(pre / "splits.npz") as splits:
            structures = len(splits["train"])
        best = best_pretrain_epoch(pre)
        points.append(
            {
                "runs_dir": runs_dir,
                "structures": structures,
                "best_epoch": best,
                "steps": _steps_to(pre / "metrics.csv", best),
                "gains": paired_gains(collect(runs_dir), init),
            }
        )
    return sorted(points, key=lambda p: p["structures"])


def _steps_to(metrics: Path, epoch: int | None) -> int | None:
    """Optimiser steps of epochs 1..``epoch`` (``metrics.csv``'s per-epoch ``steps``)."""
    if epoch is None or not metrics.is_file():
        return None
    m = read_metrics(metrics)
    if "steps" not in m:
        return None
    return int(m["steps"][m["epoch"] <= epoch].sum())


def paired_gains(rows: list[dict], init: str) -> dict:
    """``{(task, n): {gain, wins, seeds, p, baseline, pretrained}}`` of ``init`` against from
    scratch, paired by seed, from :func:`~.results.collect`'s ``rows`` (runs at another
    pre-training epoch, ``-e<k>``, are left out). ``baseline`` / ``pretrained``: mean test MAE
    over the paired seeds, in the task's unit."""
    mae: dict = defaultdict(dict)
    for r in rows:
        if r["pretrain_epoch"] is None and r["init"] in (None, init):
            mae[(r["task"], r["n"])][(r["init"], r["seed"])] = r["test_mae"]
    gains = {}
    for point, runs in mae.items():
        seeds = sorted(s for i, s in runs if i == init and (None, s) in runs)
        if not seeds:
            continue
        base = [runs[(None, s)] for s in seeds]
        pre = [runs[(init, s)] for s in seeds]
        gains[point] = {
            "gain": improvement(float(np.mean(base)), float(np.mean(pre))),
            "wins": sum(p < b for p, b in zip(pre, base)),
            "seeds": len(seeds),
            "p": paired_p(base, pre),
            "baseline": float(np.mean(base)),
            "pretrained": float(np.mean(pre)),
        }
    return gains


def point_name(point: tuple) -> str:
    """``(task, n)`` as a column name: "jdft2d 100", "c2db full"."""
    task, n = point
    return f"{task} {'full' if n is None else n}"


def point_order(point: tuple) -> tuple:
    """Sort key of ``(task, n)`` points: by task, the full split first, then by size."""
    return point[0], -1 if point[1] is None else point[1]


def gain_cell(g: dict) -> str:
    """One :func:`paired_gains` entry as a table cell: "gain % (wins/seeds, p)"."""
    p = "" if g["p"] is None else f", p={g['p']:.2g}"
    return f"{g['gain']:+.1f} ({g['wins']}/{g['seeds']}{p})"


def common_points(points: list[dict]) -> list[tuple]:
    """(task, n) points every entry of ``points`` (dicts with ``gains``) has a gain for, in
    :func:`point_order`."""
    common = [p for p in points[0]["gains"] if all(p in q["gains"] for q in points)]
    return sorted(common, key=point_order)


def scale_table(points: list[dict], init: str) -> list[str]:
    """Markdown lines: one row per sweep (pre-training structures, steps), one column per task
    point every sweep finished, cells "gain % (wins/seeds, p)", and their average."""
    common = common_points(points)
    head = ["pre-training structures", "optimiser steps", *map(point_name, common), "average"]
    lines = [
        f"| {' | '.join(head)} |",
        f"|{'---|' * len(head)}",
    ]
    for point in points:
        cells = [f"{point['structures']:,}", f"{point['steps']:,}" if point["steps"] else "–"]
        cells += [gain_cell(point["gains"][key]) for key in common]
        avg = np.mean([point["gains"][k]["gain"] for k in common]) if common else float("nan")
        cells.append(f"{avg:+.1f}")
        lines.append(f"| {' | '.join(cells)} |")
    others = sorted({k for p in points for k in p["gains"]} - set(common), key=point_order)
    if others:
        lines += ["", f"Points not finished by every sweep ({init}, gain % (wins/seeds)):", ""]
        for key in others:
            have = [
                f"{p['structures']:,}: {p['gains'][key]['gain']:+.1f} "
                f"({p['gains'][key]['wins']}/{p['gains'][key]['seeds']})"
                for p in points
                if key in p["gains"]
            ]
            lines.append(f"- {point_name(key)}: {'; '.join(have)}")
    return lines


def scale_figure(points: list[dict], init: str, out: Path) -> str:
    """Gain (%) against pre-training structures (log axis), one line per task point every
    sweep finished and their average; writes ``out/gain_vs_pretraining_size.png``, returns
    the file name."""
    import matplotlib.pyplot as plt

    common = common_points(points)
    x = [p["structures"] for p in points]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key in common:
        ax.plot(x, [p["gains"][key]["gain"] for p in points], "o-", lw=1, label=point_name(key))
    if common:
        avg = [np.mean([p["gains"][k]["gain"] for k in common]) for p in points]
        ax.plot(x, avg, "ks-", lw=2.5, label="average")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:,}" for v in x])
    ax.minorticks_off()
    ax.set_xlabel("pre-training structures (training split)")
    ax.set_ylabel(f"fine-tuning gain over scratch, % ({init})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    name = "gain_vs_pretraining_size.png"
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return name


def write_scale_report(runs_dirs: list[str | Path], init: str, target: str | Path) -> Path:
    """Write the table and figure of :func:`scale_points` to ``target`` (a folder gets
    ``report.md``; a ``.md`` file gets its figure in a folder of its name)."""
    import matplotlib

    matplotlib.use("Agg")
    points = scale_points(runs_dirs, init)
    report, out, prefix = report_paths(Path(target))
    out.mkdir(parents=True, exist_ok=True)
    sweeps = ", ".join(f"`{p['runs_dir']}`" for p in points)
    lines = [
        f"# Fine-tuning gain against pre-training set size ({init})",
        "",
        f"Sweeps: {sweeps}. Gain = % lower mean test MAE than the same sweep's from-scratch "
        "baseline, over the seeds both finished (wins: seeds where the pre-trained model is "
        "better; p: two-sided paired t-test). Steps: optimiser steps up to the pre-training "
        "epoch whose weights were fine-tuned.",
        "",
        *scale_table(points, init),
        "",
        f"![gain against pre-training structures]({prefix}{scale_figure(points, init, out)})",
        "",
    ]
    report.write_text("\n".join(lines))
    return report
