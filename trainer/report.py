"""``fp-train report RUNS_DIR``: the paper's Table 2 from a sweep, and figures.

Reads every finished run under RUNS_DIR (``result.json``, ``metrics.csv``,
``test_predictions.csv``) and the sweep's ``plan.yaml`` (units, paper values), and writes
``report.md`` with:

- per training-set size, a table in the paper's Table 2 layout: rows = from scratch and each
  pre-training label set, columns = tasks, cells = test MAE mean ± std over seeds (n), last
  column = average % improvement over the baseline across the tasks present (each task's
  improvement on the seeds both runs have, so an unfinished sweep compares like with like);
  the paper's numbers beside ours where the plan gives them;
- the data-efficiency table (test MAE against training-set size) and the epoch ablation
  (fine-tuning MAE against pre-training epochs) when the sweep has them;
- PNG figures: parity plots, learning curves, data-efficiency curves, the epoch ablation, and a
  t-SNE map of pre-trained structure embeddings coloured by a property.

``fp-train report RUN_DIR`` on one run's directory instead (:func:`write_run_report`): its
learning curve and metrics; for fine-tuning, per-target test metrics and a parity plot; for
pre-training, the test error per label set and feature group in standardised label units
(:func:`standardised_errors`).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

__all__ = [
    "collect",
    "improvement",
    "is_run_dir",
    "standardised_errors",
    "summary_table",
    "write_report",
    "write_run_report",
]


def collect(runs_dir: str | Path) -> list[dict]:
    """One row per finished fine-tuning run: task, n, init, pretrain_epoch, seed, test_mae."""
    rows = []
    base = Path(runs_dir) / "finetune"
    for result in sorted(base.glob("*/*/*/seed*/result.json")):
        run = result.parent
        task, size, name, seed = run.parts[-4:]
        init, _, epoch = name.partition("-e")
        rows.append(
            {
                "task": task,
                "n": None if size == "nall" else int(size[1:]),
                "init": None if init == "none" else init,
                "pretrain_epoch": int(epoch) if epoch else None,
                "seed": int(seed[4:]),
                "test_mae": json.loads(result.read_text())["test_mae"],
                "n_train": _train_count(run),
                "run_dir": run,
            }
        )
    return rows


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
    m = _metrics(path)
    return int(m["epoch"][np.argmin(m["val_loss"])])  # argmin: the first of equal minima


def _stats(values: list[float]) -> tuple[float, float, int]:
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


def summary_table(rows: list[dict], n, tasks: list[str], inits: list, paper: dict) -> list[str]:
    """Markdown lines of one Table-2-style table (training-set size ``n``)."""
    by_seed: dict[tuple, dict[int, float]] = defaultdict(dict)  # (init, task) -> seed -> MAE
    for r in rows:
        if r["n"] == n and r["pretrain_epoch"] is None:
            by_seed[(r["init"], r["task"])][r["seed"]] = r["test_mae"]
    tasks = [t for t in tasks if any((i, t) in by_seed for i in inits)]
    if not tasks:
        return []
    head = "| pre-training | " + " | ".join(tasks) + " | avg % improvement |"
    lines = [head, "|" + "---|" * (len(tasks) + 2)]
    for init in inits:
        cells, gains = [], []
        for t in tasks:
            mine = by_seed.get((init, t))
            if not mine:
                cells.append("–")
                continue
            mean, std, count = _stats(list(mine.values()))
            # improvement over the baseline on the seeds both have (paired: same split)
            base = by_seed.get((None, t), {})
            common = sorted(set(mine) & set(base))
            wins = ""
            if init is not None and common:
                b, v = [base[k] for k in common], [mine[k] for k in common]
                gains.append(improvement(np.mean(b), np.mean(v)))
                better = sum(x < y for x, y in zip(v, b))
                wins = f"; better on {better}/{len(common)}"
                p = paired_p(b, v)
                if p is not None:
                    wins += f", p={p:.2g}"
            cells.append(f"{mean:.4g} ± {std:.2g} ({count}{wins})")
        gain = f"{np.mean(gains):+.1f}" if gains else "–"
        lines.append(f"| {init or 'none (baseline)'} | " + " | ".join(cells) + f" | {gain} |")
    for init in inits:
        key = init or "none"
        values = [paper.get(t, {}).get(key) for t in tasks]
        if any(v is not None for v in values):
            cells = [f"{v:.4g}" if v is not None else "–" for v in values]
            gains = [
                improvement(paper[t]["none"], paper[t][key])
                for t in tasks
                if init is not None
                and paper.get(t, {}).get(key) is not None
                and paper[t].get("none") is not None
            ]
            gain = f"{np.mean(gains):+.1f}" if gains else "–"
            lines.append(
                f"| paper: {init or 'none (baseline)'} | " + " | ".join(cells) + f" | {gain} |"
            )
    return lines


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


def _ablation_table(rows: list[dict], runs_dir: Path) -> list[str]:
    """Fine-tuning test MAE against the pre-training epoch of the initial weights."""
    points = ablation_points(rows, runs_dir)
    if not points:
        return []
    lines = [
        "## Epoch ablation: test MAE against pre-training epochs",
        "",
        "0 epochs = from scratch; a label set's best pre-training checkpoint (lowest "
        "validation loss, the one fine-tuned in the tables above) is in the column of the epoch "
        "it was saved, marked *best*; – = no run. Same seeds in every cell.",
        "",
    ]
    for (task, n), table in points.items():
        epochs = sorted({e for by_epoch in table.values() for e in by_epoch})
        lines += [
            f"{task} (training structures: {n or 'full split'})",
            "",
            "| pre-training | " + " | ".join(f"{e} epochs" for e in epochs) + " |",
            "|" + "---|" * (len(epochs) + 1),
        ]
        for init, by_epoch in sorted(table.items()):
            best = best_pretrain_epoch(runs_dir / "pretrain" / init)
            cells = []
            for e in epochs:
                if e in by_epoch:
                    mean, std, count = _stats(by_epoch[e])
                    mark = ", *best*" if e == best else ""
                    cells.append(f"{mean:.4g} ± {std:.2g} ({count}{mark})")
                else:
                    cells.append("–")
            lines.append(f"| {init} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _pretrain_table(runs_dir: Path) -> list[str]:
    """Pre-training runs: epochs, best epoch, time per epoch (from ``metrics.csv``), device."""
    lines = []
    for run in sorted(p for p in (runs_dir / "pretrain").glob("*") if p.is_dir()):
        if not (run / "metrics.csv").exists():
            continue
        seconds = _metrics(run / "metrics.csv")["seconds"]
        result = run / "result.json"
        device = json.loads(result.read_text()).get("device", "–") if result.exists() else "–"
        lines.append(
            f"| {run.name} | {len(seconds)} | {best_pretrain_epoch(run)} | "
            f"{np.median(seconds):.1f} | {sum(seconds) / 60:.1f} | {device} |"
        )
    if not lines:
        return []
    return [
        "## Pre-training runs",
        "",
        "| label set | epochs | best epoch | s/epoch (median) | total min | device |",
        "|---|---|---|---|---|---|",
        *lines,
        "",
    ]


def _plan(runs_dir: Path) -> dict:
    path = runs_dir / "plan.yaml"
    if not path.exists():
        return {}
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def write_report(
    runs_dir: str | Path, out_dir: str | Path | None = None, tsne: bool = True
) -> Path:
    """Write ``report.md`` and its figures into ``out_dir`` (default RUNS_DIR/report)."""
    import matplotlib

    matplotlib.use("Agg")
    runs_dir = Path(runs_dir)
    target = Path(out_dir) if out_dir else runs_dir / "report"
    if target.suffix == ".md":  # docs/results.md: figures beside it, in docs/results/
        report, out = target, target.with_suffix("")
    else:
        report, out = target / "report.md", target
    out.mkdir(parents=True, exist_ok=True)
    figure_prefix = f"{out.name}/" if target.suffix == ".md" else ""
    plan = _plan(runs_dir)
    task_info: dict[str, dict] = {}
    for entry in plan.get("finetune", {}).get("tasks", []):  # a task may appear several times
        merged = task_info.setdefault(entry["name"], {})
        for key, value in entry.items():
            if value not in (None, {}, []):
                merged.setdefault(key, value)
    rows = collect(runs_dir)
    tasks = list(task_info) or sorted({r["task"] for r in rows})
    tasks += sorted({r["task"] for r in rows} - set(tasks))
    inits = [None, *sorted({r["init"] for r in rows if r["init"]})]
    paper = {t: info.get("paper", {}) for t, info in task_info.items()}
    sizes = sorted({r["n"] for r in rows}, key=lambda n: (n is None, n or 0))
    lines = [
        "# Pre-training vs from scratch: results",
        "",
        f"Runs: `{runs_dir}` ({len(rows)} finished fine-tuning runs). Test MAE, mean ± "
        "sample std over seeds (number of seeds; on how many of the seeds both have the "
        "pre-trained model beat the baseline: each seed is one split, the same for every "
        "row; p = two-sided paired t-test over those seeds, shown from 3 seeds); "
        "improvement = % lower mean MAE than the from-scratch baseline on those "
        "seeds, averaged over the tasks of the row.",
        "",
        *_setup(plan, runs_dir, target),
    ]
    units = {t: task_info.get(t, {}).get("unit", "") for t in tasks}
    if any(units.values()):
        lines += ["Units: " + ", ".join(f"{t} {u}" for t, u in units.items() if u), ""]
    for n in sizes:
        table = summary_table(rows, n, tasks, inits, paper if n is None else {})
        if table:
            title = (
                "full training split (0.6 of each task)"
                if n is None
                else f"{n} training structures"
            )
            lines += [f"## Test MAE, {title}", "", *table, ""]
    lines += _ablation_table(rows, runs_dir)
    lines += _pretrain_table(runs_dir)
    notes = runs_dir / "notes.md"  # hand-written reading of the numbers, kept with the runs
    if notes.exists():
        lines += ["## Notes", "", notes.read_text().strip(), ""]
    figures = _figures(rows, runs_dir, out, tasks, inits, sizes, tsne, task_info)
    for caption, name in figures:
        lines += [f"### {caption}", "", f"![{caption}]({figure_prefix}{name})", ""]
    report.write_text("\n".join(lines))
    return report


def _setup(plan: dict, runs_dir: Path, target: Path) -> list[str]:
    """How the numbers were produced: commands, model and schedule from the plan."""
    if not plan:
        return []
    source = plan.get("plan_file", "PLAN.yaml")
    lines = [
        "Produced by:",
        "",
        "```bash",
        f"fp-train sweep {source} --runs-dir {runs_dir} --parallel 2",
        f"fp-train report {runs_dir} --out {target}",
        "```",
        "",
    ]
    model = plan.get("model", {})
    if model:
        lines += [
            "Model and shared settings: " + ", ".join(f"{k} {v}" for k, v in model.items()) + ".",
            "",
        ]
    pre, ft = plan.get("pretrain") or {}, plan.get("finetune") or {}
    if pre:
        lines += [
            f"Pre-training on `{pre.get('store')}` with "
            f"{', '.join(pre.get('labels', []))}: "
            + ", ".join(f"{k} {v}" for k, v in pre.get("config", {}).items())
            + ".",
            "",
        ]
    if ft:
        lines += [
            "Fine-tuning: "
            + ", ".join(f"{k} {v}" for k, v in ft.get("config", {}).items())
            + f"; seeds {ft.get('seeds')}.",
            "",
        ]
        overrides = []
        for task in ft.get("tasks", []):
            own = {k: task[k] for k in ("seeds", "inits", "pretrain_epochs") if k in task}
            own.update(task.get("config", {}))
            if own:
                sizes = ", ".join(
                    "all" if n is None else str(n) for n in task.get("train_sizes", [None])
                )
                overrides.append(
                    f"- {task['name']} (training sizes {sizes}): "
                    + ", ".join(f"{k} {v}" for k, v in own.items())
                    + "."
                )
        if overrides:
            lines += [*overrides, ""]
    return lines


def _figures(rows, runs_dir, out, tasks, inits, sizes, tsne, task_info) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    made = []
    colours = {None: "0.4"}
    palette = plt.get_cmap("tab10")
    labels = sorted(
        {i for i in inits if i} | {p.name for p in (runs_dir / "pretrain").glob("*") if p.is_dir()}
    )
    for k, label in enumerate(labels):
        colours[label] = palette(k)
    # data efficiency
    multi = [t for t in tasks if len({r["n"] for r in rows if r["task"] == t}) > 1]
    if multi:
        fig, axes = plt.subplots(1, len(multi), figsize=(4 * len(multi), 3.4), squeeze=False)
        for ax, task in zip(axes[0], multi):
            tick_sizes: set[int] = set()
            for k, init in enumerate(inits):
                pts, counts = defaultdict(list), defaultdict(list)
                for r in rows:
                    if r["task"] == task and r["init"] == init and r["pretrain_epoch"] is None:
                        pts[r["n"]].append(r["test_mae"])
                        counts[r["n"]].append(r["n_train"] or r["n"] or 0)
                if not pts:
                    continue
                # x = training structures actually used (the full split's size from its saved
                # split file)
                size = {n: np.mean(c) for n, c in counts.items()}
                xs = sorted(pts, key=size.get)
                tick_sizes.update(round(size[n]) for n in xs)
                dodge = 1 + 0.015 * (k - (len(inits) - 1) / 2)  # keep error bars apart
                x = [size[n] * dodge for n in xs]
                y = [np.mean(pts[n]) for n in xs]
                e = [np.std(pts[n]) for n in xs]
                ax.errorbar(
                    x,
                    y,
                    yerr=e,
                    marker="o",
                    capsize=3,
                    color=colours[init],
                    label=init or "from scratch",
                )
            ax.set_xscale("log")
            # label the sizes actually run, not matplotlib's minor decades (they overlap
            # when a task spans less than one decade)
            ax.xaxis.set_major_locator(FixedLocator(_thin_ticks(tick_sizes)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("training structures")
            ax.set_ylabel(f"test MAE {task_info.get(task, {}).get('unit', '')}")
            ax.set_title(task)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "data_efficiency.png", dpi=120)
        plt.close(fig)
        made.append(("Data efficiency: test MAE against training-set size", "data_efficiency.png"))
    # epoch ablation
    points = ablation_points(rows, runs_dir)
    if points:
        fig, axes = plt.subplots(1, len(points), figsize=(4 * len(points), 3.4), squeeze=False)
        for ax, ((task, n), table) in zip(axes[0], points.items()):
            for init, by_epoch in sorted(table.items()):
                xs = sorted(by_epoch)
                ax.errorbar(
                    xs,
                    [np.mean(by_epoch[x]) for x in xs],
                    yerr=[np.std(by_epoch[x]) for x in xs],
                    marker="o",
                    capsize=3,
                    color=colours[init],
                    label=init,
                )
            base = [v for by_epoch in table.values() for v in by_epoch.get(0, [])]
            if base:
                ax.axhline(np.mean(base), color="0.4", ls="--", label="from scratch")
            ax.set_xlabel("pre-training epochs")
            ax.set_ylabel(f"test MAE {task_info.get(task, {}).get('unit', '')}")
            ax.set_title(f"{task}, {n or 'full'} training")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "epoch_ablation.png", dpi=120)
        plt.close(fig)
        made.append(
            ("Epoch ablation: fine-tuning MAE against pre-training epochs", "epoch_ablation.png")
        )
    # parity plots: largest training size, first seed
    for task in tasks:
        task_rows = [r for r in rows if r["task"] == task and r["pretrain_epoch"] is None]
        if not task_rows:
            continue
        n = max((r["n"] for r in task_rows), key=lambda v: float("inf") if v is None else v)
        seed = min(r["seed"] for r in task_rows)
        chosen = [r for r in task_rows if r["n"] == n and r["seed"] == seed]
        fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 3.2), squeeze=False)
        for ax, r in zip(axes[0], sorted(chosen, key=lambda r: r["init"] or "")):
            t, p = _predictions(r["run_dir"])
            ax.scatter(t, p, s=6, alpha=0.6, color=colours.get(r["init"], "k"))
            lo, hi = np.nanmin([t.min(), p.min()]), np.nanmax([t.max(), p.max()])
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_title(f"{r['init'] or 'from scratch'}\nMAE {r['test_mae']:.3g}", fontsize=8)
            ax.set_xlabel("target")
            ax.set_ylabel("prediction")
        fig.tight_layout()
        name = f"parity_{task}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append((f"Parity, {task} (seed {seed}, test split)", name))
    # learning curves: pre-training and one fine-tuning task
    pre_dirs = sorted((runs_dir / "pretrain").glob("*/metrics.csv"))
    if pre_dirs:
        fig, ax = plt.subplots(figsize=(4.5, 3.4))
        for path in pre_dirs:
            m = _metrics(path)
            ax.plot(
                m["epoch"],
                m["val_loss"],
                label=path.parent.name,
                color=colours.get(path.parent.name, None),
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation L1 (standardised labels)")
        ax.set_title("pre-training")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "learning_pretrain.png", dpi=120)
        plt.close(fig)
        made.append(("Learning curves, pre-training", "learning_pretrain.png"))
    for task in tasks:
        task_rows = [r for r in rows if r["task"] == task and r["pretrain_epoch"] is None]
        if not task_rows:
            continue
        n = max((r["n"] for r in task_rows), key=lambda v: float("inf") if v is None else v)
        curves = defaultdict(list)
        for r in task_rows:
            if r["n"] == n:
                curves[r["init"]].append(_metrics(r["run_dir"] / "metrics.csv")["val_mae"])
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.4))
        for init, series in curves.items():
            length = min(len(s) for s in series)
            mean = np.mean([s[:length] for s in series], axis=0)
            ax.plot(
                np.arange(1, length + 1),
                mean,
                label=init or "from scratch",
                color=colours.get(init, None),
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation MAE")
        ax.set_title(f"fine-tuning {task} (mean over seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"learning_{task}.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        made.append((f"Learning curves, fine-tuning {task}", name))
    if tsne and pre_dirs and task_info:
        made += _tsne(runs_dir, out, task_info, pre_dirs)
    return made


def _thin_ticks(sizes: set[int], min_ratio: float = 1.3) -> list[int]:
    """Tick positions for a log axis: the given sizes, ascending, dropping any closer than a
    factor ``min_ratio`` to the previous kept one (their labels would overlap)."""
    kept: list[int] = []
    for v in sorted(sizes):
        if v > 0 and (not kept or v >= kept[-1] * min_ratio):
            kept.append(v)
    return kept


def _metrics(path: Path) -> dict[str, np.ndarray]:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def _predictions(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(run_dir / "test_predictions.csv") as fh:
        rows = list(csv.reader(fh))
    data = np.array([[float(v) for v in r[1:3]] for r in rows[1:]])
    return data[:, 0], data[:, 1]


def _tsne(runs_dir: Path, out: Path, task_info: dict, pre_dirs, limit: int = 1500):
    """t-SNE of pre-trained structure embeddings of the first task's store, coloured by its
    target (the paper's Figure 1 analogue)."""
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from trainer.inference import embed_store
    from trainer.sweep import _expand

    task = next(iter(task_info.values()))
    store = _expand(task["store"])
    checkpoints = [p.parent / "best.pt" for p in pre_dirs if (p.parent / "best.pt").exists()]
    if not checkpoints:
        return []
    from schemas import open_store

    s = open_store(store, descriptors=[])
    col = s.target_names.index(task["target"])
    idx = np.arange(len(s))
    if len(idx) > limit:
        idx = np.sort(np.random.default_rng(0).choice(idx, limit, replace=False))
    target = np.array([s.get(int(i), descriptors=[])["targets"][col] for i in idx])
    fig, axes = plt.subplots(
        1, len(checkpoints), figsize=(4 * len(checkpoints), 3.6), squeeze=False
    )
    for ax, ckpt in zip(axes[0], checkpoints):
        cache = runs_dir / "embeddings"  # recomputed only when missing
        cache.mkdir(exist_ok=True)
        emb_path = cache / f"{ckpt.parent.name}_{task['name']}.npz"
        if not emb_path.exists():
            embed_store(ckpt, store, emb_path, device="cpu")
        emb = np.load(emb_path)["embeddings"][idx]
        xy = TSNE(
            n_components=2, random_state=0, init="pca", perplexity=min(30, max(5, len(idx) // 4))
        ).fit_transform(emb)
        lo, hi = np.nanpercentile(target, [2, 98])  # heavy tails would wash the map out
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=target, s=5, cmap="viridis", vmin=lo, vmax=hi)
        ax.set_title(
            f"{ckpt.parent.name} embeddings\n{task['name']} coloured by {task['target']}",
            fontsize=8,
        )
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(sc, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(out / "tsne.png", dpi=120)
    plt.close(fig)
    return [(f"t-SNE of pre-trained embeddings ({task['name']})", "tsne.png")]


# ------------------------------------------------------------------------------------------
# One run: fp-train report RUN_DIR
# ------------------------------------------------------------------------------------------
def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is one run's directory (``config.json`` and ``metrics.csv``), not a
    sweep's (whose runs are under ``pretrain/`` and ``finetune/``)."""
    path = Path(path)
    return (path / "config.json").is_file() and (path / "metrics.csv").is_file()


def _feature_group(name: str) -> str:
    """The group of a descriptor feature: its name without the last, fastest-varying
    parameter (``l=1,eta=5,Rs=2.35`` -> ``l=1,eta=5``; ``order=0,sigma=0.5`` -> ``order=0``;
    ``order=-1`` stays itself)."""
    head, sep, _ = name.rpartition(",")
    return head if sep else name


def standardised_errors(run_dir: str | Path, store=None, device="cpu", batch_size=16) -> dict:
    """Test-split error of a pre-training run's ``best.pt`` in standardised label units.

    Units are the run's own label scaling (the checkpoint's ``scaler``: y' = (y − shift) /
    scale; per_feature: each feature's store mean and std), so 1.0 is one standard deviation
    of that feature over the store. Beside each error, that of always predicting the store
    mean (y' = 0), a floor any model should beat.

    Args:
        run_dir: the pre-training run (``best.pt``).
        store: store to compute on (default: the path in the checkpoint); it must be the
            run's store (graphs and label hashes), since the split is by record index.

    Returns:
        ``{"scaling", "atoms", "structures", "rows"}``; ``rows``: one dict per label set (its
        ``group`` "all") and per feature group: ``labels``, ``family``, ``group``,
        ``features``, ``mae`` and ``mean_predictor_mae`` (mean over atoms and features).
    """
    import torch
    from torch.utils.data import DataLoader

    from trainer.checkpoint import check_same_store, describe_store, model_from_checkpoint
    from trainer.data import LabelScaler, StoreDataset, collate
    from trainer.train import EpochSampler, _device

    dev = _device(device)
    model, ckpt = model_from_checkpoint(Path(run_dir) / "best.pt", dev)
    args, labels = ckpt["model_args"], list(ckpt["labels"])
    path = str(store or ckpt["store"]["path"])
    scaler = LabelScaler.from_dict(ckpt["scaler"])
    dataset = StoreDataset(path, "node", labels, args["max_neighbors"], args["cutoff"], scaler)
    manifest = dataset.store.manifest
    check_same_store(
        Path(run_dir) / "best.pt", ckpt["store"], describe_store(manifest, path, "node", labels)
    )
    test = np.asarray(ckpt["splits"]["test"])
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=collate,
        sampler=EpochSampler(test, 0, False, 0, 1),
    )
    err_sum = np.zeros(dataset.label_dim)
    floor_sum = np.zeros(dataset.label_dim)
    atoms = 0
    with torch.no_grad():
        for batch in loader:
            batch = batch.to(dev)
            pred = model(batch.z, batch.edge_index, batch.edge_vec, batch.batch, batch.num_graphs)
            y = batch.y.double()
            err_sum += (pred.double() - y).abs().sum(0).cpu().numpy()
            floor_sum += y.abs().sum(0).cpu().numpy()
            atoms += len(batch.z)
    mae, floor = err_sum / max(atoms, 1), floor_sum / max(atoms, 1)
    rows, start = [], 0
    for name in labels:
        entry = manifest["descriptors"][name]
        names = entry.get("feature_names") or [str(k) for k in range(entry["dim"])]
        cols = np.arange(start, start + len(names))
        start += len(names)
        family = entry.get("family")
        rows.append(_error_row(name, family, "all", cols, mae, floor))
        groups: dict[str, list[int]] = {}
        for col, feature in zip(cols, names):
            groups.setdefault(_feature_group(feature), []).append(int(col))
        if len(groups) > 1:
            rows += [_error_row(name, family, g, c, mae, floor) for g, c in groups.items()]
    return {"scaling": scaler.mode, "atoms": atoms, "structures": len(test), "rows": rows}


def _error_row(labels, family, group, cols, mae, floor) -> dict:
    return {
        "labels": labels,
        "family": family,
        "group": group,
        "features": len(cols),
        "mae": float(mae[cols].mean()),
        "mean_predictor_mae": float(floor[cols].mean()),
    }


def _run_target(path: Path, out: Path) -> tuple[Path, Path, str]:
    """(report file, figure folder, prefix of figure links) for ``--out`` (as the sweep's)."""
    target = out if out else path / "report"
    if target.suffix == ".md":
        return target, target.with_suffix(""), f"{target.with_suffix('').name}/"
    return target / "report.md", target, ""


def _units(run_dir: Path) -> dict[str, str]:
    """Label name -> unit, from the run's best.pt (``predicts``), where it records one."""
    best = run_dir / "best.pt"
    if not best.exists():
        return {}
    from trainer.checkpoint import load_checkpoint

    try:
        predicts = load_checkpoint(best).get("predicts", {})
    except Exception:  # noqa: BLE001  (units are a nicety; the report goes on without them)
        return {}
    return {lab["name"]: lab.get("unit") or "" for lab in predicts.get("labels", [])}


def _shift(run_dir: Path, labels: list[str]) -> np.ndarray | None:
    """The fine-tuning targets' scaler shift (the training split's mean), from best.pt."""
    best = run_dir / "best.pt"
    if not best.exists():
        return None
    from trainer.checkpoint import load_checkpoint

    scaler = load_checkpoint(best).get("scaler") or {}
    shift = np.asarray(scaler.get("shift", []), dtype=np.float64)
    return shift if scaler.get("mode") != "none" and len(shift) == len(labels) else None


def _test_table(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(target names, (R, T) targets, (R, T) predictions) of test_predictions.csv."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    head = rows[0]
    names = [h.removeprefix("target_") for h in head if h.startswith("target_")]
    data = np.array([[float(v) for v in r[1:]] for r in rows[1:]], dtype=np.float64)
    data = data.reshape(len(rows) - 1, 2 * len(names))
    return names, data[:, : len(names)], data[:, len(names) :]


def _learning_curve(m: dict, best: int, finetune: bool, units: str, out: Path) -> str:
    import matplotlib.pyplot as plt

    panels = 2 if finetune else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.4), squeeze=False)
    ax = axes[0][0]
    ax.plot(m["epoch"], m["train_loss"], label="training")
    ax.plot(m["epoch"], m["val_loss"], label="validation")
    ax.axvline(best, color="0.5", ls=":", label=f"best (epoch {best})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("L1 loss (standardised labels)")
    ax.legend(fontsize=7)
    if finetune:
        ax = axes[0][1]
        ax.plot(m["epoch"], m["val_mae"], color="C1")
        ax.axvline(best, color="0.5", ls=":")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation MAE {units}".strip())
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=120)
    plt.close(fig)
    return "learning_curve.png"


def _parity(names, targets, preds, units: dict, out: Path) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.6), squeeze=False)
    for k, (ax, name) in enumerate(zip(axes[0], names)):
        t, p = targets[:, k], preds[:, k]
        keep = ~np.isnan(t)
        ax.scatter(t[keep], p[keep], s=8, alpha=0.6)
        lo = np.nanmin([t[keep].min(), p[keep].min()]) if keep.any() else 0.0
        hi = np.nanmax([t[keep].max(), p[keep].max()]) if keep.any() else 1.0
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        unit = f" ({units[name]})" if units.get(name) else ""
        ax.set_xlabel(f"target {name}{unit}")
        ax.set_ylabel(f"prediction{unit}")
        ax.set_title(f"test MAE {np.nanmean(np.abs(p - t)):.4g}{unit}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "parity.png", dpi=120)
    plt.close(fig)
    return "parity.png"


def _target_metrics(names, targets, preds, shift, units: dict) -> list[str]:
    """Markdown rows per target: n, MAE, RMSE, R², max error, MAE of the training mean."""
    lines = [
        "| target | unit | structures | MAE | RMSE | R² | max error | MAE of the training mean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, name in enumerate(names):
        t, p = targets[:, k], preds[:, k]
        keep = ~np.isnan(t)
        err = p[keep] - t[keep]
        spread = np.sum((t[keep] - t[keep].mean()) ** 2)
        r2 = 1 - np.sum(err**2) / spread if spread > 0 else float("nan")
        floor = f"{np.mean(np.abs(t[keep] - shift[k])):.6g}" if shift is not None else "–"
        lines.append(
            f"| {name} | {units.get(name) or '–'} | {int(keep.sum())} | "
            f"{np.mean(np.abs(err)):.6g} | {np.sqrt(np.mean(err**2)):.6g} | {r2:.4f} | "
            f"{np.max(np.abs(err)):.6g} | {floor} |"
        )
    return lines


def write_run_report(
    run_dir: str | Path, out: str | Path | None = None, store=None, device: str = "cpu"
) -> Path:
    """``report.md`` for one run, with ``learning_curve.png`` and (fine-tuning)
    ``parity.png``, in ``out`` (default RUN_DIR/report; a ``.md`` path puts the figures in a
    folder of its name).

    Fine-tuning: per target, test MAE, RMSE, R², largest error and the MAE of predicting the
    training mean (from ``test_predictions.csv``). Pre-training: the test error per label set
    and feature group in standardised label units (:func:`standardised_errors`; needs the
    run's store, else the report says why it is missing).
    """
    import matplotlib

    matplotlib.use("Agg")
    run_dir = Path(run_dir)
    report, figures, prefix = _run_target(run_dir, Path(out) if out else None)
    figures.mkdir(parents=True, exist_ok=True)
    config = json.loads((run_dir / "config.json").read_text())
    m = _metrics(run_dir / "metrics.csv")
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    finetune = config.get("mode") == "finetune"
    labels = list(config.get("labels", []))
    units = _units(run_dir)
    best = int(m["epoch"][np.argmin(m["val_loss"])])
    state = "finished" if result else "unfinished (no result.json yet)"
    lines = [
        f"# Run report: `{run_dir}`",
        "",
        f"{'Fine-tuning' if finetune else 'Pre-training'} of {', '.join(labels)} on "
        f"`{config.get('store')}`, {state}."
        + (f" Initial weights: `{config['init']}`." if finetune and config.get("init") else "")
        + (" From scratch." if finetune and not config.get("init") else ""),
        "",
        "| | |",
        "|---|---|",
        f"| epochs | {len(m['epoch'])} of {config.get('epochs')} |",
        f"| best epoch (lowest validation loss) | {best} |",
        f"| best validation loss (L1, standardised labels) | {float(np.min(m['val_loss'])):.6g} |",
        f"| training time | {float(np.sum(m['seconds'])) / 60:.1f} min |",
        f"| device | {result.get('device', '–')} |",
        "| settings | "
        + ", ".join(
            f"{k} {config[k]}"
            for k in ("batch_size", "lr", "seed", "split", "fold", "max_train", "max_val")
            if config.get(k) is not None
        )
        + " |",
        "",
    ]
    made = [
        ("Learning curve", _learning_curve(m, best, finetune, units.get(labels[0], ""), figures))
    ]
    predictions = run_dir / "test_predictions.csv"
    if finetune and predictions.exists():
        names, targets, preds = _test_table(predictions)
        lines += [
            "## Test split",
            "",
            *_target_metrics(names, targets, preds, _shift(run_dir, names), units),
            "",
        ]
        made.append(("Parity, test split", _parity(names, targets, preds, units, figures)))
    elif not finetune:
        lines += _pretrain_section(run_dir, store, device)
    for caption, name in made:
        lines += [f"### {caption}", "", f"![{caption}]({prefix}{name})", ""]
    report.write_text("\n".join(lines))
    return report


def _pretrain_section(run_dir: Path, store, device: str) -> list[str]:
    """Markdown: the standardised test error table of a pre-training run, or why not."""
    from schemas import StoreError
    from trainer.errors import TrainingError

    head = ["## Test error in standardised label units", ""]
    if not (run_dir / "best.pt").exists():
        return [*head, "Not computed: the run has no best.pt.", ""]
    try:
        errors = standardised_errors(run_dir, store, device)
    except (StoreError, TrainingError, FileNotFoundError) as err:
        return [*head, f"Not computed: {err}", ""]
    lines = [
        *head,
        f"On the {errors['structures']} test structures ({errors['atoms']} atoms) of the run's "
        f"split; label scaling `{errors['scaling']}` (per_feature: 1.0 = one standard deviation "
        "of the feature over the store). *Mean predictor*: the error of always predicting the "
        "store mean; *ratio*: the model's error over it (lower is better, 1 = no skill).",
        "",
        "| label set | family | feature group | features | MAE | mean predictor | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in errors["rows"]:
        ratio = r["mae"] / r["mean_predictor_mae"] if r["mean_predictor_mae"] > 0 else np.nan
        group = "**all**" if r["group"] == "all" else f"`{r['group']}`"
        lines.append(
            f"| {r['labels']} | {r['family'] or '–'} | {group} | {r['features']} | "
            f"{r['mae']:.4g} | {r['mean_predictor_mae']:.4g} | {ratio:.2f} |"
        )
    return [*lines, ""]
