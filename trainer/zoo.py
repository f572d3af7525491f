"""The model zoo: pre-trained checkpoints shipped with the package, loadable by name.

The weights live in ``trainer/pretrained/`` (package data, so an installed wheel has them and
``--init NAME`` works from any folder, not only in a clone of the repository), next to their
registry ``zoo.json``: per model its ``name``, ``file``, ``sha256``, ``bytes`` and a ``card``
(pre-training store and content hash, label set, structures, epochs, parameters, best
validation loss, the data's licence and the measured fine-tuning effect).

- :func:`resolve` turns a checkpoint path or a zoo name into a file (checking the zoo file's
  sha256 first); ``fp-train finetune --init``, ``evaluate --checkpoint`` and ``embed
  --checkpoint`` call it.
- ``fp-train models`` lists the zoo, ``fp-train models NAME`` prints one card
  (:func:`format_table`, :func:`format_card`).
- :func:`add` turns a pre-training run directory into a zoo entry: the run's ``best.pt``
  stripped for inference and fine-tuning (weights, ``model_args``, ``predicts``, label scaler,
  store description, configuration, split and history; no optimiser, scheduler or RNG state),
  its card, and the fine-tuning effect computed from a sweep's runs. From the command line::

      python -m fingerprint_pretrain.trainer.zoo add RUNS/pretrain/eadset1 \\
          --name et-small-mp20-eadset1 --sweep RUNS --licence "Materials Project data, CC BY 4.0"

Size budget: the shipped files together stay within :data:`BUDGET_BYTES` (15 MB), each within
:data:`MAX_MODEL_BYTES` (8 MB); :func:`add` refuses more. The CPU-scale models take 1.0-1.3 MB
each; a paper-scale ET (hidden 128, 8 layers) is 7.1-7.5 MB stripped in float32, so one fits
beside them, and three replacing them would need half-precision weights (~3.7 MB each) or a
release page registered by URL and sha256 instead of package data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from fingerprint_pretrain.trainer.checkpoint import (
    ARCHITECTURE_KEYS,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from fingerprint_pretrain.trainer.errors import TrainingError

# The architecture a card lists: the checkpoint's model flags (the backbone name has its own
# line, self-loops are an ET detail) and the output width.
CARD_MODEL_KEYS = (
    *(k for k in ARCHITECTURE_KEYS if k not in ("model", "self_loops")),
    "out_dim",
)

__all__ = [
    "BUDGET_BYTES",
    "MAX_MODEL_BYTES",
    "ZOO_DIR",
    "UnknownModel",
    "add",
    "entries",
    "entry",
    "fine_tuning_effects",
    "format_card",
    "format_table",
    "resolve",
    "sha256_of",
    "strip_checkpoint",
]

ZOO_DIR = Path(__file__).parent / "pretrained"
REGISTRY = "zoo.json"
BUDGET_BYTES = 15_000_000  # every shipped file of the zoo together
MAX_MODEL_BYTES = 8_000_000  # one stripped checkpoint (a paper-scale ET: 7.1-7.5 MB)

# What a stripped checkpoint keeps: everything inference, fine-tuning (--init) and evaluation on
# the pre-training split need, and its provenance; the optimiser, scheduler and RNG states
# (only a resume needs them) are two thirds of a checkpoint's bytes.
KEEP = (
    "format",
    "version",
    "model",
    "model_args",
    "predicts",
    "labels",
    "scaler",
    "store",
    "config",
    "epoch",
    "best_val",
    "history",
    "splits",
)


class UnknownModel(TrainingError):
    """A name that is neither a checkpoint file nor a model of the zoo."""


# ------------------------------------------------------------------------------------------
# The registry
# ------------------------------------------------------------------------------------------
def _read_registry(zoo_dir: Path) -> dict:
    path = Path(zoo_dir) / REGISTRY
    if not path.exists():
        return {"format": "fingerprint-pretrain-zoo", "version": 1, "models": []}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TrainingError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None


def entries(zoo_dir: str | Path = ZOO_DIR) -> list[dict]:
    """Every zoo entry (``name``, ``file``, ``sha256``, ``bytes``, ``card``), by name."""
    return sorted(_read_registry(Path(zoo_dir))["models"], key=lambda e: e["name"])


def entry(name: str, zoo_dir: str | Path = ZOO_DIR) -> dict:
    """The zoo entry ``name``; UnknownModel (listing the names) if there is none."""
    found = [e for e in entries(zoo_dir) if e["name"] == name]
    if not found:
        raise UnknownModel(f"{name}: no such zoo model ({_known(zoo_dir)})")
    return found[0]


def _known(zoo_dir) -> str:
    names = [e["name"] for e in entries(zoo_dir)]
    return f"zoo models: {', '.join(names)}" if names else "the zoo is empty"


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(name_or_path: str | Path, zoo_dir: str | Path = ZOO_DIR) -> Path:
    """The checkpoint file ``name_or_path`` means: an existing file as given, else the zoo
    model of that name after checking its sha256.

    Raises:
        UnknownModel: neither a file nor a zoo name (the message lists the zoo's names).
        TrainingError: the zoo file is missing or its sha256 differs from the registry's.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    try:
        found = entry(str(name_or_path), zoo_dir)
    except UnknownModel:
        raise UnknownModel(
            f"{name_or_path}: neither a checkpoint file nor a zoo model "
            f"({_known(zoo_dir)}; fp-train models describes them)"
        ) from None
    file = Path(zoo_dir) / found["file"]
    if not file.is_file():
        raise TrainingError(f"{file}: zoo model {found['name']} is registered but its file is gone")
    digest = sha256_of(file)
    if digest != found["sha256"]:
        raise TrainingError(
            f"{file}: sha256 {digest[:16]}… is not the zoo's {found['sha256'][:16]}… for "
            f"{found['name']} (a damaged or replaced file); reinstall fingerprint-pretrain"
        )
    return file


# ------------------------------------------------------------------------------------------
# Making an entry
# ------------------------------------------------------------------------------------------
def strip_checkpoint(ckpt: dict, name: str, source_sha256: str) -> dict:
    """``ckpt`` without the state only a resume needs (see :data:`KEEP`), with a ``zoo`` key:
    the entry's name and the sha256 of the checkpoint it came from."""
    missing = [k for k in ("model", "model_args", "predicts", "scaler", "store") if k not in ckpt]
    if missing:
        raise TrainingError(f"checkpoint lacks {', '.join(missing)}: not a format-2 run checkpoint")
    out = {k: ckpt[k] for k in KEEP if k in ckpt}
    out["zoo"] = {"name": name, "stripped_from_sha256": source_sha256}
    return out


def fine_tuning_effects(runs_dir: str | Path, init: str) -> list[dict]:
    """Test MAE of fine-tuning from pre-training label set ``init`` against the from-scratch
    baseline, per task and training-set size, over the seeds both have (each seed is one
    split shared by both), from a sweep's runs (``trainer.harness.results.collect``).

    Returns:
        One dict per (task, n): ``task``, ``n`` (None = the full training split), ``unit``,
        ``seeds``, ``baseline`` and ``pretrained`` (mean test MAE), ``change_percent``
        ((pretrained − baseline) / baseline × 100; negative = better), ``better_on`` (seeds
        on which the pre-trained model's MAE was lower) and ``p`` (paired t-test, from 3 seeds;
        else None); full split first, then sizes descending, tasks in the plan's order.
    """
    from fingerprint_pretrain.trainer.harness.results import collect, paired_p, read_plan

    runs_dir = Path(runs_dir)
    plan = read_plan(runs_dir)
    order = [t["name"] for t in plan.get("finetune", {}).get("tasks", [])]
    units = {t["name"]: t.get("unit") for t in plan.get("finetune", {}).get("tasks", [])}
    by_seed: dict[tuple, dict[int, float]] = {}
    for r in collect(runs_dir):
        if r["pretrain_epoch"] is None and r["init"] in (None, init):
            by_seed.setdefault((r["task"], r["n"], r["init"]), {})[r["seed"]] = r["test_mae"]
    out = []
    for task, n, who in by_seed:
        if who is None or (task, n, None) not in by_seed:
            continue
        mine, base = by_seed[(task, n, init)], by_seed[(task, n, None)]
        seeds = sorted(set(mine) & set(base))
        if not seeds:
            continue
        b, v = [base[s] for s in seeds], [mine[s] for s in seeds]
        out.append(
            {
                "task": task,
                "n": n,
                "unit": units.get(task),
                "seeds": seeds,
                "baseline": float(np.mean(b)),
                "pretrained": float(np.mean(v)),
                "change_percent": float(100.0 * (np.mean(v) - np.mean(b)) / np.mean(b)),
                "better_on": int(sum(x < y for x, y in zip(v, b))),
                "p": paired_p(b, v),
            }
        )
    rank: dict[str, int] = {}
    for k, t in enumerate(order):  # a task may appear several times in a plan: its first
        rank.setdefault(t, k)
    out.sort(key=lambda e: (e["n"] is not None, -(e["n"] or 0), rank.get(e["task"], 99), e["task"]))
    return out


def _card(ckpt: dict, model, run_dir: Path, licence: str, effects, source: str, notes) -> dict:
    """The model card of a stripped checkpoint (plain JSON values)."""
    args, history = ckpt["model_args"], ckpt.get("history", [])
    splits = {k: int(len(v)) for k, v in ckpt.get("splits", {}).items()}
    val = [h["val_loss"] for h in history]
    result = run_dir / "result.json"
    result = json.loads(result.read_text()) if result.exists() else {}
    store = ckpt["store"]
    store_name = Path(str(store.get("path", ""))).name
    for suffix in (".lmdb", ".zarr"):
        store_name = store_name.removesuffix(suffix)
    return {
        "task": ckpt["predicts"]["task"],
        "labels": [
            {k: lab.get(k) for k in ("name", "kind", "family", "dim", "unit")}
            for lab in ckpt["predicts"]["labels"]
        ],
        "label_scaling": ckpt["scaler"].get("mode"),
        "pretraining_store": {
            "name": store_name,
            "content_hash": store.get("content_hash"),
            "graphs_hash": store.get("graphs_hash"),
            "label_hashes": store.get("label_hashes") or {},
        },
        "structures": {**splits, "total": sum(splits.values())},
        "epochs": len(history),
        "best_epoch": int(np.argmin(val)) + 1 if val else None,
        "best_val_loss": float(ckpt.get("best_val", min(val) if val else float("nan"))),
        "model": {
            "model": args.get("model", "et"),  # format-2 checkpoints before backbones: ET
            **{k: args[k] for k in CARD_MODEL_KEYS if k in args},
            "parameters": int(sum(p.numel() for p in model.parameters())),
        },
        "training": {
            k: ckpt["config"][k]
            for k in ("lr", "batch_size", "seed", "split")
            if k in ckpt.get("config", {})
        }
        | {
            "minutes": round(sum(h.get("seconds", 0.0) for h in history) / 60, 1),
            "device": result.get("device"),
        },
        "licence": licence,
        "fine_tuning": {"source": source, "effects": effects},
        "notes": list(notes),
        "source_run": str(run_dir),
    }


def add(
    run_dir: str | Path,
    name: str,
    licence: str,
    sweep: str | Path | None = None,
    init_label: str | None = None,
    source: str | None = None,
    notes: tuple[str, ...] = (),
    zoo_dir: str | Path = ZOO_DIR,
    force: bool = False,
) -> dict:
    """Add the pre-training run ``run_dir`` (its ``best.pt``) to the zoo as ``name``.

    Writes ``zoo_dir/NAME.pt`` (stripped, :func:`strip_checkpoint`) and its entry in
    ``zoo.json``.

    Args:
        run_dir: a pre-training run directory (``best.pt``, ``result.json``).
        name: the zoo name (``et-small-mp20-eadset1``: model, scale, store, label set).
        licence: the training data's licence, as the card shows it.
        sweep: a sweep's runs directory whose fine-tuning runs started from this model: the
            card's fine-tuning effect (:func:`fine_tuning_effects`); None = none measured.
        init_label: this model's name in the sweep's ``init`` (default: ``run_dir``'s name).
        source: where the effect is published (default: the sweep directory).
        notes: free text lines for the card (caveats, follow-ups).
        force: replace an entry of the same name.

    Raises:
        TrainingError: the name exists (without ``force``), the file would exceed
            :data:`MAX_MODEL_BYTES` or the zoo :data:`BUDGET_BYTES`.
    """
    run_dir, zoo_dir = Path(run_dir), Path(zoo_dir)
    registry = _read_registry(zoo_dir)
    others = [e for e in registry["models"] if e["name"] != name]
    if len(others) < len(registry["models"]) and not force:
        raise TrainingError(
            f"{name}: already in the zoo ({zoo_dir / REGISTRY}); --force replaces it"
        )
    best = run_dir / "best.pt"
    ckpt = load_checkpoint(best)
    stripped = strip_checkpoint(ckpt, name, sha256_of(best))
    zoo_dir.mkdir(parents=True, exist_ok=True)
    file = zoo_dir / f"{name}.pt"
    tmp = zoo_dir / f".{name}.pt.new"
    save_checkpoint(stripped, tmp)
    size = tmp.stat().st_size
    used = sum(e["bytes"] for e in others)
    if size > MAX_MODEL_BYTES or used + size > BUDGET_BYTES:
        tmp.unlink()
        raise TrainingError(
            f"{best}: stripped to {size / 1e6:.2f} MB, the zoo would hold "
            f"{(used + size) / 1e6:.2f} MB; the budget is {MAX_MODEL_BYTES / 1e6:.0f} MB a model "
            f"and {BUDGET_BYTES / 1e6:.0f} MB in all (publish it elsewhere, by URL and sha256)"
        )
    tmp.replace(file)
    model, _ = model_from_checkpoint(file)  # reads back through the safe loader
    effects = fine_tuning_effects(sweep, init_label or run_dir.name) if sweep else []
    card = _card(
        stripped, model, run_dir, licence, effects, source or (str(sweep) if sweep else None), notes
    )
    new = {"name": name, "file": file.name, "sha256": sha256_of(file), "bytes": size, "card": card}
    registry["models"] = sorted([*others, new], key=lambda e: e["name"])
    (zoo_dir / REGISTRY).write_text(json.dumps(registry, indent=1, ensure_ascii=False) + "\n")
    return new


# ------------------------------------------------------------------------------------------
# Showing it
# ------------------------------------------------------------------------------------------
def _size(n) -> str:
    return "full split" if n is None else f"n={n}"


def effect_line(card: dict) -> str:
    """One line: mean change of test MAE against from scratch, per training-set size, and on
    how many tasks pre-training was better (``full split -14.9% (3/3 tasks better); ...``)."""
    effects = card.get("fine_tuning", {}).get("effects") or []
    if not effects:
        return "fine-tuning effect not measured"
    parts = []
    for n in dict.fromkeys(e["n"] for e in effects):
        rows = [e for e in effects if e["n"] == n]
        mean = np.mean([e["change_percent"] for e in rows])
        better = sum(e["change_percent"] < 0 for e in rows)
        parts.append(f"{_size(n)} {mean:+.1f}% ({better}/{len(rows)} tasks better)")
    return "test MAE vs scratch: " + "; ".join(parts)


def _labels_text(card: dict) -> str:
    return ", ".join(
        lab["name"] + (f" ({lab['dim']} features per atom)" if lab.get("dim") else "")
        for lab in card["labels"]
    )


# How cards name each backbone (trainer.backbones.BACKBONES); a card without one is an ET's.
MODEL_NAMES = {"et": "ET", "schnet": "SchNet", "painn": "PaiNN"}


def model_name(card: dict) -> str:
    """The backbone of a card as people write it (``ET``, ``SchNet``, ``PaiNN``)."""
    name = card.get("model", {}).get("model", "et")
    return MODEL_NAMES.get(name, name)


def _model_text(model: dict) -> str:
    """A card's model line: the backbone, its size and its own options."""
    own = {
        "et": f"{model.get('num_heads')} heads, ",
        "schnet": f"{model.get('num_filters')} filters, ",
        "painn": f"{model.get('radial_basis')} RBF basis, ",
    }.get(model.get("model", "et"), "")
    return (
        f"{MODEL_NAMES.get(model.get('model', 'et'), model.get('model'))}, hidden "
        f"{model.get('hidden_channels')}, {model.get('num_layers')} layers, "
        f"{model.get('num_rbf')} RBF, {own}head {model.get('head_channels')}, cutoff "
        f"{model.get('cutoff')} Å, nearest {model.get('max_neighbors')} neighbours; "
        f"{model['parameters']:,} parameters"
    )


def format_table(zoo: list[dict]) -> str:
    """The zoo as a text table: name, model, label set, structures, parameters, size,
    effect."""
    if not zoo:
        return "the zoo is empty"
    rows = [("name", "model", "labels", "structures", "parameters", "MB", "fine-tuning effect")]
    for e in zoo:
        card = e["card"]
        rows.append(
            (
                e["name"],
                model_name(card),
                ", ".join(lab["name"] for lab in card["labels"]),
                f"{card['structures']['total']:,}",
                f"{card['model']['parameters']:,}",
                f"{e['bytes'] / 1e6:.1f}",
                effect_line(card),
            )
        )
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    return "\n".join([*lines, "", "fp-train models NAME prints a model's card."])


def _effect_text(e: dict) -> str:
    unit = f" {e['unit']}" if e.get("unit") else ""
    p = f", p = {e['p']:.2g}" if e.get("p") is not None else ""
    return (
        f"{e['task']}: {e['pretrained']:.4g} vs {e['baseline']:.4g}{unit} from scratch, "
        f"{e['change_percent']:+.1f} % (better on {e['better_on']}/{len(e['seeds'])} seeds{p})"
    )


def format_card(e: dict, zoo_dir: str | Path = ZOO_DIR) -> str:
    """A zoo entry's whole card as text."""
    card = e["card"]
    store, model, s = card["pretraining_store"], card["model"], card["structures"]
    hashes = f"content hash {store['content_hash']}"
    if store.get("graphs_hash"):
        hashes += f", graphs hash {store['graphs_hash']}"
    if card["task"] == "node":
        use = f"fp-train finetune --init {e['name']} --store STORE --target TARGET --run-dir DIR"
    else:
        use = f"fp-train evaluate --checkpoint {e['name']} --store STORE --split all"
    train = card.get("training", {})
    lines = [
        e["name"],
        "",
        f"  use:              {use}",
        f"  file:             {Path(zoo_dir) / e['file']} ({e['bytes'] / 1e6:.2f} MB, sha256 "
        f"{e['sha256']})",
        f"  pre-training:     store {store['name']} ({hashes})",
        f"  labels:           {_labels_text(card)}; scaling {card.get('label_scaling')}",
        f"  structures:       {s['total']:,} (train {s.get('train', 0):,}, val "
        f"{s.get('val', 0):,}, test {s.get('test', 0):,})",
        f"  epochs:           {card['epochs']} (best {card['best_epoch']}); "
        + ", ".join(f"{k} {v}" for k, v in train.items() if v is not None),
        f"  model:            {_model_text(model)}",
        f"  best val loss:    {card['best_val_loss']:.4g} (L1, standardised label units)",
        f"  licence:          {card['licence']}",
    ]
    effects = card.get("fine_tuning", {}).get("effects") or []
    if effects:
        lines += [
            "",
            "  fine-tuning effect (test MAE, fine-tuned from this model vs from scratch, mean "
            "over the same seeds = splits; negative = lower error):",
            f"  source: {card['fine_tuning'].get('source')}",
        ]
        for n in dict.fromkeys(x["n"] for x in effects):
            lines.append(
                "    full training split (0.6 of each task):"
                if n is None
                else f"    {n} training structures:"
            )
            lines += [f"      {_effect_text(x)}" for x in effects if x["n"] == n]
    if card.get("notes"):
        lines += ["", *[f"  note: {t}" for t in card["notes"]]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer.zoo add RUN_DIR --name NAME --licence TEXT [--sweep RUNS] ...``."""
    import click

    @click.group()
    def cli() -> None:
        """Maintain the model zoo (trainer/pretrained/zoo.json)."""

    @cli.command("add")
    @click.argument("run_dir")
    @click.option("--name", required=True, help="Zoo name, e.g. et-small-mp20-eadset1.")
    @click.option("--licence", required=True, help="The training data's licence (card text).")
    @click.option("--sweep", default=None, help="Sweep runs dir: measure the fine-tuning effect.")
    @click.option("--init-label", default=None, help="This model's init name in the sweep.")
    @click.option("--source", default=None, help="Where the effect is published (card text).")
    @click.option("--note", "notes", multiple=True, help="A line of notes (repeatable).")
    @click.option("--zoo-dir", default=str(ZOO_DIR), show_default=True, help="Zoo folder.")
    @click.option("--force", is_flag=True, help="Replace an entry of the same name.")
    def add_command(run_dir, name, licence, sweep, init_label, source, notes, zoo_dir, force):
        """Strip RUN_DIR/best.pt into the zoo and register it with its card."""
        new = add(run_dir, name, licence, sweep, init_label, source, notes, zoo_dir, force)
        click.echo(f"added {new['name']}: {new['bytes'] / 1e6:.2f} MB, sha256 {new['sha256']}")

    try:
        cli.main(
            args=argv, prog_name="python -m fingerprint_pretrain.trainer.zoo", standalone_mode=False
        )
    except click.UsageError as err:
        click.echo(f"fingerprint_pretrain.trainer.zoo: error: {err.format_message()}", err=True)
        return 2
    except TrainingError as err:
        click.echo(f"fingerprint_pretrain.trainer.zoo: error: {err}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
