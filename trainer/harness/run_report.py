"""``fp-train report RUN_DIR``: one run's report (:func:`write_run_report`).

Its learning curve and metrics; for fine-tuning, per-target test metrics and a parity plot;
for pre-training, the test error per label set and feature group in standardised label units
(:func:`standardised_errors`). A sweep's directory gets :mod:`trainer.harness.report` instead
(:func:`is_run_dir` tells them apart).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from fingerprint_pretrain.trainer.harness.figures import (
    figure_markdown,
    learning_curve,
    parity,
    report_paths,
)
from fingerprint_pretrain.trainer.harness.results import read_metrics

__all__ = ["is_run_dir", "standardised_errors", "write_run_report"]

# The settings a run report lists (when the run set them).
SETTINGS = ("batch_size", "lr", "seed", "split", "fold", "max_train", "max_val")


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
    report, figures, prefix = report_paths(Path(out) if out else run_dir / "report")
    figures.mkdir(parents=True, exist_ok=True)
    config = json.loads((run_dir / "config.json").read_text())
    m = read_metrics(run_dir / "metrics.csv")
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    finetune = config.get("mode") == "finetune"
    labels = list(config.get("labels", []))
    units = _units(run_dir)
    best = int(m["epoch"][np.argmin(m["val_loss"])])
    lines = _summary(run_dir, config, m, result, best)
    made = [
        ("Learning curve", learning_curve(m, best, finetune, units.get(labels[0], ""), figures))
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
        made.append(("Parity, test split", parity(names, targets, preds, units, figures)))
    elif not finetune:
        lines += _pretrain_section(run_dir, store, device)
    lines += figure_markdown(made, prefix)
    report.write_text("\n".join(lines))
    return report


def _summary(run_dir: Path, config: dict, m: dict, result: dict, best: int) -> list[str]:
    """Markdown: what the run trained, on what, from what, and its table of epochs, best
    epoch, loss, time, device and settings (``m``: its metrics; ``best``: best epoch)."""
    finetune = config.get("mode") == "finetune"
    state = "finished" if result else "unfinished (no result.json yet)"
    settings = ", ".join(f"{k} {config[k]}" for k in SETTINGS if config.get(k) is not None)
    return [
        f"# Run report: `{run_dir}`",
        "",
        f"{'Fine-tuning' if finetune else 'Pre-training'} of "
        f"{', '.join(config.get('labels', []))} on `{config.get('store')}`, {state}."
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
        f"| settings | {settings} |",
        "",
    ]


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
    from fingerprint_pretrain.trainer.checkpoint import (
        check_same_store,
        describe_store,
        model_from_checkpoint,
    )
    from fingerprint_pretrain.trainer.data import LabelScaler, StoreDataset
    from fingerprint_pretrain.trainer.evaluation import resolve_device

    dev = resolve_device(device)
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
    mae, floor, atoms = _per_feature_errors(model, dataset, test, dev, batch_size)
    rows = _error_rows(labels, manifest, mae, floor)
    return {"scaling": scaler.mode, "atoms": atoms, "structures": len(test), "rows": rows}


def _per_feature_errors(model, dataset, indices, dev, batch_size: int):
    """(model MAE (D,), mean-predictor MAE (D,), atoms) per label feature over the records
    ``indices`` of ``dataset``, in its (scaled) label units, averaged over atoms."""
    import torch
    from fingerprint_pretrain.trainer.evaluation import ordered_loader

    loader = ordered_loader(dataset, indices, batch_size)
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
    return err_sum / max(atoms, 1), floor_sum / max(atoms, 1), atoms


def _error_rows(labels: list[str], manifest: dict, mae, floor) -> list[dict]:
    """Rows of :func:`standardised_errors`: per label set (group ``all``), then per feature
    group when the set has more than one (``mae``, ``floor``: (D,) over all label sets)."""
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
    return rows


def _error_row(labels, family, group, cols, mae, floor) -> dict:
    """One row of :func:`standardised_errors`: the mean errors over the columns ``cols``."""
    return {
        "labels": labels,
        "family": family,
        "group": group,
        "features": len(cols),
        "mae": float(mae[cols].mean()),
        "mean_predictor_mae": float(floor[cols].mean()),
    }


def _units(run_dir: Path) -> dict[str, str]:
    """Label name -> unit, from the run's best.pt (``predicts``), where it records one."""
    best = run_dir / "best.pt"
    if not best.exists():
        return {}
    from fingerprint_pretrain.trainer.checkpoint import load_checkpoint

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
    from fingerprint_pretrain.trainer.checkpoint import load_checkpoint

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


def _pretrain_section(run_dir: Path, store, device: str) -> list[str]:
    """Markdown: the standardised test error table of a pre-training run, or why not."""
    from fingerprint_pretrain.schemas import StoreError
    from fingerprint_pretrain.trainer.errors import TrainingError

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
