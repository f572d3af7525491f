"""``fp-train report RUNS_DIR``: the paper's Table 2 from a sweep, and figures.

Reads every finished run under RUNS_DIR (:mod:`trainer.harness.results`) and the sweep's
``plan.yaml`` (units, paper values), and writes ``report.md`` with:

- per training-set size, a table in the paper's Table 2 layout: rows = from scratch and each
  pre-training label set, columns = tasks, cells = test MAE mean ± std over seeds (n), last
  column = average % improvement over the baseline across the tasks present (each task's
  improvement on the seeds both runs have, so an unfinished sweep compares like with like);
  the paper's numbers beside ours where the plan gives them;
- for fine-tuning runs that adapted their initial weights to the task first (an init named
  ``LABEL+adapt``, ``fp-train finetune --adapt-epochs``), the cost of that adaptation beside
  the fine-tuning's own time;
- the data-efficiency table (test MAE against training-set size) and the epoch ablation
  (fine-tuning MAE against pre-training epochs) when the sweep has them;
- PNG figures (:mod:`fingerprint_pretrain.trainer.harness.figures`): parity plots, learning curves,
  data-efficiency curves, the epoch ablation, and a t-SNE map of pre-trained structure
  embeddings coloured by a property.

``fp-train report RUN_DIR`` on one run's directory instead: :mod:`trainer.harness.run_report`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from fingerprint_pretrain.trainer.harness.figures import (
    figure_markdown,
    report_paths,
    sweep_figures,
)
from fingerprint_pretrain.trainer.harness.results import (
    ablation_points,
    best_pretrain_epoch,
    collect,
    improvement,
    mean_std,
    paired_p,
    read_metrics,
    read_plan,
)

__all__ = ["summary_table", "write_report"]

INTRODUCTION = (
    "Test MAE, mean ± sample std over seeds (number of seeds; on how many of the seeds both "
    "have the pre-trained model beat the baseline: each seed is one split, the same for every "
    "row; p = two-sided paired t-test over those seeds, shown from 3 seeds); improvement = % "
    "lower mean MAE than the from-scratch baseline on those seeds, averaged over the tasks of "
    "the row."
)


def write_report(
    runs_dir: str | Path, out_dir: str | Path | None = None, tsne: bool = True
) -> Path:
    """Write ``report.md`` and its figures into ``out_dir`` (default RUNS_DIR/report; a ``.md``
    path, e.g. docs/results.md, puts the figures beside it in a folder of its name)."""
    import matplotlib

    matplotlib.use("Agg")
    runs_dir = Path(runs_dir)
    target = Path(out_dir) if out_dir else runs_dir / "report"
    report, out, figure_prefix = report_paths(target)
    out.mkdir(parents=True, exist_ok=True)
    plan = read_plan(runs_dir)
    task_info = _task_info(plan)
    rows = collect(runs_dir)
    tasks = list(task_info) or sorted({r["task"] for r in rows})
    tasks += sorted({r["task"] for r in rows} - set(tasks))
    inits = [None, *sorted({r["init"] for r in rows if r["init"]})]
    lines = [
        "# Pre-training vs from scratch: results",
        "",
        f"Runs: `{runs_dir}` ({len(rows)} finished fine-tuning runs). {INTRODUCTION}",
        "",
        *_setup(plan, runs_dir, target),
        *_units_line(tasks, task_info),
        *_mae_tables(rows, tasks, inits, task_info),
        *_adaptation_table(rows, tasks),
        *_ablation_table(rows, runs_dir),
        *_pretrain_table(runs_dir),
        *_notes(runs_dir),
    ]
    figures = sweep_figures(rows, runs_dir, out, tasks, inits, tsne, task_info)
    lines += figure_markdown(figures, figure_prefix)
    report.write_text("\n".join(lines))
    return report


def _task_info(plan: dict) -> dict[str, dict]:
    """The plan's fine-tuning tasks by name; a task listed several times (e.g. with other
    sizes or seeds) merged, its first non-empty value of each key kept."""
    task_info: dict[str, dict] = {}
    for entry in plan.get("finetune", {}).get("tasks", []):
        merged = task_info.setdefault(entry["name"], {})
        for key, value in entry.items():
            if value not in (None, {}, []):
                merged.setdefault(key, value)
    return task_info


def _units_line(tasks: list[str], task_info: dict) -> list[str]:
    """``Units: task unit, ...`` for the tasks whose plan entry gives a unit."""
    units = {t: task_info.get(t, {}).get("unit", "") for t in tasks}
    if not any(units.values()):
        return []
    return ["Units: " + ", ".join(f"{t} {u}" for t, u in units.items() if u), ""]


def _mae_tables(rows: list[dict], tasks: list[str], inits: list, task_info: dict) -> list[str]:
    """A Table-2-style section per training-set size (ascending, the full split last; the
    paper's values only beside the full split's)."""
    paper = {t: info.get("paper", {}) for t, info in task_info.items()}
    sizes = sorted({r["n"] for r in rows}, key=lambda n: (n is None, n or 0))
    lines = []
    for n in sizes:
        table = summary_table(rows, n, tasks, inits, paper if n is None else {})
        if table:
            title = (
                "full training split (0.6 of each task)"
                if n is None
                else f"{n} training structures"
            )
            lines += [f"## Test MAE, {title}", "", *table, ""]
    return lines


def _adaptation_table(rows: list[dict], tasks: list[str]) -> list[str]:
    """Task-adaptive pre-training cost: per task, size and adapted init, the adaptation's wall
    seconds (mean ± std over seeds, from ``adapted``) and the fine-tuning's (sum of its
    ``metrics.csv`` ``seconds`` column, mean over the seeds that have one); [] when no run
    adapted."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["adapted"]:
            groups[(r["task"], r["n"], r["init"], r["pretrain_epoch"])].append(r)
    if not groups:
        return []
    order = {t: k for k, t in enumerate(tasks)}

    def sort_key(k: tuple) -> tuple:  # tasks in table order, sizes ascending (full split last)
        return order.get(k[0], len(order)), k[0], k[1] or 1e18, k[2], k[3] or 0

    lines = [
        "## Task-adaptive pre-training cost",
        "",
        "Wall seconds of the adaptation (pre-training objective on the task's own structures, "
        "before fine-tuning) beside those of the fine-tuning itself (sum of its epochs); mean ± "
        "sample std over seeds (number of seeds).",
        "",
        "| task | training structures | pre-training | adaptation epochs | structures adapted "
        "on | adaptation s | fine-tuning s | adaptation / fine-tuning |",
        "|" + "---|" * 8,
    ]
    for key in sorted(groups, key=sort_key):
        task, n, init, epoch = key
        runs = groups[key]
        adapt_s = [float(r["adapted"]["seconds"]) for r in runs]
        mean, std, count = mean_std(adapt_s)
        tune_s = [s for s in (_finetune_seconds(r["run_dir"]) for r in runs) if s is not None]
        tune = mean_std(tune_s) if tune_s else None
        ratio = f"{mean / tune[0]:.2g}" if tune and tune[0] > 0 else "–"
        lines.append(
            f"| {task} | {n or 'full split'} | {init}{f'-e{epoch}' if epoch else ''} | "
            f"{_distinct(runs, 'epochs')} | {_distinct(runs, 'structures', 'on')} | "
            f"{mean:.4g} ± {std:.2g} ({count}) | "
            + (f"{tune[0]:.4g} ± {tune[1]:.2g} ({tune[2]}) | " if tune else "– | ")
            + f"{ratio} |"
        )
    return [*lines, ""]


def _distinct(runs: list[dict], key: str, split_key: str | None = None) -> str:
    """The distinct values of ``adapted[key]`` over ``runs`` (with ``(adapted[split_key])``
    after each where given), comma-separated; – where missing."""
    values = []
    for r in runs:
        value = r["adapted"].get(key)
        text = "–" if value is None else str(value)
        if split_key and r["adapted"].get(split_key):
            text += f" ({r['adapted'][split_key]})"
        if text not in values:
            values.append(text)
    return ", ".join(values)


def _finetune_seconds(run_dir: Path) -> float | None:
    """Wall seconds of a fine-tuning run's epochs: sum of ``metrics.csv``'s ``seconds``; None
    without the file."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    return float(read_metrics(path)["seconds"].sum())


def _notes(runs_dir: Path) -> list[str]:
    """The runs folder's ``notes.md`` (a hand-written reading of the numbers) as a section."""
    notes = runs_dir / "notes.md"
    if not notes.exists():
        return []
    return ["## Notes", "", notes.read_text().strip(), ""]


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
            mean, std, count = mean_std(list(mine.values()))
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
                    mean, std, count = mean_std(by_epoch[e])
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
        seconds = read_metrics(run / "metrics.csv")["seconds"]
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
