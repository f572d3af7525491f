"""The reports' PNG figures, one function per figure.

A sweep (:func:`sweep_figures`, in the order the report shows them): data efficiency (test MAE
against training-set size), the epoch ablation (fine-tuning MAE against pre-training epochs),
a parity plot per task, the pre-training learning curves, a fine-tuning learning curve per task
and a t-SNE map of pre-trained structure embeddings coloured by a property. One run
(:mod:`fingerprint_pretrain.trainer.harness.run_report`): :func:`learning_curve` and :func:`parity`.

Every figure function draws into ``out`` and returns the file names it wrote with their
captions; matplotlib must use a non-interactive backend (the report modules select ``Agg``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from fingerprint_pretrain.trainer.harness.results import (
    ablation_points,
    read_metrics,
    read_test_predictions,
)

__all__ = ["figure_markdown", "learning_curve", "parity", "report_paths", "sweep_figures"]

Figure = tuple[str, str]  # (caption, file name in the figure folder)


def report_paths(target: Path) -> tuple[Path, Path, str]:
    """(report file, figure folder, prefix of the figure links) for a report written to
    ``target``: a folder gets ``report.md`` and the figures inside; a ``.md`` file (e.g.
    docs/results.md) gets its figures beside it, in a folder of its name (docs/results/)."""
    if target.suffix == ".md":
        folder = target.with_suffix("")
        return target, folder, f"{folder.name}/"
    return target / "report.md", target, ""


def figure_markdown(figures: list[Figure], prefix: str) -> list[str]:
    """Markdown lines showing ``figures``, each under a ``###`` heading of its caption."""
    lines = []
    for caption, name in figures:
        lines += [f"### {caption}", "", f"![{caption}]({prefix}{name})", ""]
    return lines


# ------------------------------------------------------------------------------------------
# A sweep: fp-train report RUNS_DIR
# ------------------------------------------------------------------------------------------
def sweep_figures(
    rows: list[dict],
    runs_dir: Path,
    out: Path,
    tasks: list[str],
    inits: list,
    tsne: bool,
    task_info: dict,
) -> list[Figure]:
    """Every figure of a sweep report that its runs allow, written into ``out``.

    Args:
        rows: the finished fine-tuning runs (:func:`trainer.harness.results.collect`).
        tasks, inits: in the order of the tables (``None`` = from scratch).
        tsne: whether to draw the t-SNE map (it embeds the first task's store).
        task_info: the plan's task entries by name (``unit``, ``store``, ``target``).
    """
    colours = _colours(inits, runs_dir)
    units = {t: task_info.get(t, {}).get("unit", "") for t in tasks}
    made = _data_efficiency(rows, tasks, inits, colours, units, out)
    made += _epoch_ablation(ablation_points(rows, runs_dir), colours, units, out)
    for task in tasks:
        made += _task_parity(rows, task, colours, out)
    pre_dirs = sorted((runs_dir / "pretrain").glob("*/metrics.csv"))
    made += _pretrain_curves(pre_dirs, colours, out)
    for task in tasks:
        made += _finetune_curves(rows, task, colours, out)
    if tsne and pre_dirs and task_info:
        made += _tsne(runs_dir, out, task_info, pre_dirs)
    return made


def _colours(inits: list, runs_dir: Path) -> dict:
    """Init (label set, ``None`` = from scratch) -> matplotlib colour, the same in every
    figure: grey for the baseline, tab10 for the label sets in alphabetical order."""
    import matplotlib.pyplot as plt

    colours = {None: "0.4"}
    palette = plt.get_cmap("tab10")
    labels = sorted(
        {i for i in inits if i} | {p.name for p in (runs_dir / "pretrain").glob("*") if p.is_dir()}
    )
    for k, label in enumerate(labels):
        colours[label] = palette(k)
    return colours


def _data_efficiency(rows, tasks, inits, colours, units, out: Path) -> list[Figure]:
    """Test MAE against training-set size, one panel per task run at several sizes."""
    import matplotlib.pyplot as plt

    multi = [t for t in tasks if len({r["n"] for r in rows if r["task"] == t}) > 1]
    if not multi:
        return []
    fig, axes = plt.subplots(1, len(multi), figsize=(4 * len(multi), 3.4), squeeze=False)
    for ax, task in zip(axes[0], multi):
        _data_efficiency_panel(ax, rows, task, inits, colours)
        ax.set_ylabel(f"test MAE {units.get(task, '')}")
        ax.set_title(task)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "data_efficiency.png", dpi=120)
    plt.close(fig)
    return [("Data efficiency: test MAE against training-set size", "data_efficiency.png")]


def _data_efficiency_panel(ax, rows, task: str, inits: list, colours: dict) -> None:
    """One task's curves (mean ± std over seeds per init) on a log axis of training sizes."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

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
        ax.errorbar(
            [size[n] * dodge for n in xs],
            [np.mean(pts[n]) for n in xs],
            yerr=[np.std(pts[n]) for n in xs],
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


def _thin_ticks(sizes: set[int], min_ratio: float = 1.3) -> list[int]:
    """Tick positions for a log axis: the given sizes, ascending, dropping any closer than a
    factor ``min_ratio`` to the previous kept one (their labels would overlap)."""
    kept: list[int] = []
    for v in sorted(sizes):
        if v > 0 and (not kept or v >= kept[-1] * min_ratio):
            kept.append(v)
    return kept


def _epoch_ablation(points: dict, colours, units, out: Path) -> list[Figure]:
    """Fine-tuning MAE against pre-training epochs, one panel per (task, size), with the
    from-scratch baseline as a dashed line (``points``: :func:`ablation_points`)."""
    import matplotlib.pyplot as plt

    if not points:
        return []
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
        ax.set_ylabel(f"test MAE {units.get(task, '')}")
        ax.set_title(f"{task}, {n or 'full'} training")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "epoch_ablation.png", dpi=120)
    plt.close(fig)
    return [("Epoch ablation: fine-tuning MAE against pre-training epochs", "epoch_ablation.png")]


def _largest_size(task_rows: list[dict]):
    """The largest training-set size among ``task_rows`` (``None``, the full split, above
    every number)."""
    return max((r["n"] for r in task_rows), key=lambda v: float("inf") if v is None else v)


def _task_parity(rows, task: str, colours, out: Path) -> list[Figure]:
    """Test-split parity of one task: a panel per init at the largest size, first seed."""
    import matplotlib.pyplot as plt

    task_rows = [r for r in rows if r["task"] == task and r["pretrain_epoch"] is None]
    if not task_rows:
        return []
    n = _largest_size(task_rows)
    seed = min(r["seed"] for r in task_rows)
    chosen = [r for r in task_rows if r["n"] == n and r["seed"] == seed]
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 3.2), squeeze=False)
    for ax, r in zip(axes[0], sorted(chosen, key=lambda r: r["init"] or "")):
        t, p = read_test_predictions(r["run_dir"])
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
    return [(f"Parity, {task} (seed {seed}, test split)", name)]


def _pretrain_curves(pre_dirs: list[Path], colours, out: Path) -> list[Figure]:
    """Validation loss per epoch of every pre-training run (``pre_dirs``: their
    ``metrics.csv``)."""
    import matplotlib.pyplot as plt

    if not pre_dirs:
        return []
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    for path in pre_dirs:
        m = read_metrics(path)
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
    return [("Learning curves, pre-training", "learning_pretrain.png")]


def _finetune_curves(rows, task: str, colours, out: Path) -> list[Figure]:
    """Validation MAE per epoch of one task at its largest size, mean over seeds per init
    (over the epochs every seed has)."""
    import matplotlib.pyplot as plt

    task_rows = [r for r in rows if r["task"] == task and r["pretrain_epoch"] is None]
    if not task_rows:
        return []
    n = _largest_size(task_rows)
    curves = defaultdict(list)
    for r in task_rows:
        if r["n"] == n:
            curves[r["init"]].append(read_metrics(r["run_dir"] / "metrics.csv")["val_mae"])
    if not curves:
        return []
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
    return [(f"Learning curves, fine-tuning {task}", name)]


def _tsne(runs_dir: Path, out: Path, task_info: dict, pre_dirs, limit: int = 1500):
    """t-SNE of pre-trained structure embeddings of the first task's store, coloured by its
    target (the paper's Figure 1 analogue)."""
    import matplotlib.pyplot as plt
    from fingerprint_pretrain.schemas import open_store
    from fingerprint_pretrain.trainer.harness.sweep import expand_path
    from fingerprint_pretrain.trainer.inference import embed_store
    from sklearn.manifold import TSNE

    task = next(iter(task_info.values()))
    store = expand_path(task["store"])
    checkpoints = [p.parent / "best.pt" for p in pre_dirs if (p.parent / "best.pt").exists()]
    if not checkpoints:
        return []
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
def learning_curve(m: dict, best: int, finetune: bool, units: str, out: Path) -> str:
    """``learning_curve.png``: training and validation loss per epoch (``m``: the run's
    metrics, :func:`read_metrics`) with the best epoch marked; fine-tuning adds a panel of
    the validation MAE in ``units``. Returns the file name."""
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


def parity(names, targets, preds, units: dict, out: Path) -> str:
    """``parity.png``: prediction against target on the test split, a panel per target
    (``targets``, ``preds``: (R, T), NaN targets left out). Returns the file name."""
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
