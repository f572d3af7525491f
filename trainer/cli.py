"""``fp-train``: pre-train, fine-tune, evaluate, embed, convert old checkpoints.

Every :class:`~trainer.config.TrainConfig` field is a flag (``--batch-size``, ``--lr``,
``--max-neighbors`` ...; booleans as ``--amp/--no-amp``) with the paper's value as default, and
a key of the YAML file given with ``--config`` (flags win over the file). Errors end with one
line on stderr, ``fp-train: error: ...``.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

import click

from trainer.config import TrainConfig, load_yaml

# Fields set by each command's own arguments rather than generic flags.
_OWN = {"mode", "store", "labels", "init"}


def _config_options(func):
    """Add one click option per TrainConfig field (defaults are applied later, per mode)."""
    hints = typing.get_type_hints(TrainConfig)
    for f in reversed(dataclasses.fields(TrainConfig)):
        if f.name in _OWN:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        if hint is bool:
            func = click.option(f"{flag}/--no-{f.name.replace('_', '-')}", f.name, default=None)(
                func
            )
        elif typing.get_origin(hint) is list:
            func = click.option(
                flag,
                f.name,
                type=float,
                multiple=True,
                help="repeat for each value (e.g. --split 0.6 --split 0.2 --split 0.2)",
            )(func)
        else:
            inner = [a for a in typing.get_args(hint) if a is not type(None)]
            kind = inner[0] if inner else hint
            func = click.option(flag, f.name, type=kind, default=None)(func)
    return click.option(
        "--config", "config_file", default=None, help="YAML file of configuration keys."
    )(func)


def _make_config(mode: str, config_file, labels, store, init, options) -> TrainConfig:
    cfg = TrainConfig.defaults(mode)
    from_file = load_yaml(config_file) if config_file else {}
    cfg = cfg.updated(**from_file)
    ctx = click.get_current_context(silent=True)
    source = click.core.ParameterSource
    given = {
        k: v
        for k, v in options.items()
        if v is not None
        and v != ()
        and (ctx is None or ctx.get_parameter_source(k) != source.DEFAULT)
    }
    if "split" in given:
        given["split"] = list(given["split"])
    if labels:
        given["labels"] = list(labels)
    if store:
        given["store"] = store
    if init:
        given["init"] = init
    cfg = cfg.updated(mode=mode, **given)
    if cfg.init:
        cfg = cfg.updated(**_model_from_init(cfg, {**from_file, **given}))
    if not cfg.store:
        raise click.UsageError("--store is required (or 'store' in --config)")
    if not cfg.labels:
        what = "--descriptor" if mode == "pretrain" else "--target"
        raise click.UsageError(f"{what} is required (or 'labels' in --config)")
    return cfg


def _model_from_init(cfg: TrainConfig, given: dict) -> dict:
    """The model flags not given, taken from the checkpoint the run starts from (``--init``,
    or the run's own ``last.pt`` when it resumes); a given flag that differs is a usage error
    naming both values."""
    from trainer.checkpoint import ModelFlagConflict, architecture_from_checkpoint

    own = Path(cfg.run_dir) / "last.pt"
    source = own if cfg.resume and own.exists() else cfg.init
    try:
        return architecture_from_checkpoint(source, given)
    except ModelFlagConflict as err:
        raise click.UsageError(str(err)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Pre-train TorchMD-Net's equivariant transformer on structural fingerprints and
    fine-tune it on properties, streaming fp-build stores."""


@cli.command()
@click.option("--store", default=None, help="Store with the descriptor labels.")
@click.option("--descriptor", "-d", "labels", multiple=True, help="Label set(s) to regress.")
@_config_options
def pretrain(store, labels, config_file, **options) -> None:
    """Node-level pre-training: predict every atom's descriptor vector."""
    from trainer.train import train

    train(_make_config("pretrain", config_file, labels, store, None, options))


@cli.command()
@click.option("--store", default=None, help="Store with the property targets.")
@click.option("--target", "-t", "labels", multiple=True, help="Target name(s).")
@click.option(
    "--init",
    default=None,
    help="Pre-trained checkpoint (omit: from scratch). The model (size, cutoff, neighbours) "
    "comes from it: give no model flag, or only ones equal to the checkpoint's.",
)
@_config_options
def finetune(store, labels, init, config_file, **options) -> None:
    """Graph-level fine-tuning (from a pre-trained checkpoint, or the from-scratch baseline)."""
    from trainer.train import train

    train(_make_config("finetune", config_file, labels, store, init, options))


@cli.command()
@click.option("--checkpoint", required=True, help="Checkpoint (best.pt / last.pt).")
@click.option("--store", default=None, help="Store to evaluate on (default: the run's).")
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test", "all"]),
    default="test",
    show_default=True,
    help="Split of the run's store ('all' for another store).",
)
@click.option("--out", default=None, help="Predictions CSV (graph tasks).")
@click.option("--device", default="auto", show_default=True)
def evaluate(checkpoint, store, split, out, device) -> None:
    """MAE of a checkpoint on a split (or a whole store), in the labels' units."""
    from trainer.inference import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, store, split, out, device)
    click.echo(f"MAE {result['test_mae']:.6g} on {result['test_structures']} structures")


@cli.command()
@click.option("--checkpoint", required=True)
@click.option("--store", required=True, help="Store whose structures to embed.")
@click.option("--out", required=True, help="Output .npz: ids (R,), embeddings (R, H).")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--device", default="auto", show_default=True)
def embed(checkpoint, store, out, batch_size, device) -> None:
    """Per-structure embeddings (sum of the final node features) to a file."""
    from trainer.inference import embed_store

    n, dim = embed_store(checkpoint, store, out, batch_size, device)
    click.echo(f"wrote {out}: {n} structures × {dim} features")


@cli.command("convert-checkpoint")
@click.argument("old")
@click.option("--out", default=None, help="Where to write (default: replace OLD).")
@click.option(
    "--store",
    default=None,
    help="The training store, to record its hashes and units (default: the path in OLD, "
    "if its content hash matches).",
)
def convert_checkpoint(old, out, store) -> None:
    """Rewrite a checkpoint of an older fp-train (format 1) in the safe format 2: same weights,
    optimiser, RNG states and split. Only for files you trust: their weights are what you will
    train and predict with (the reader allows NumPy arrays and nothing else, so it runs no code
    from the file either)."""
    from trainer.checkpoint import convert_checkpoint as convert

    path, notes = convert(old, out, store)
    for note in notes:
        click.echo(f"note: {note}")
    click.echo(f"wrote {path} (checkpoint format 2)")


@cli.command()
@click.argument("plan")
@click.option("--runs-dir", default=None, help="Where the runs go (default: the plan's).")
@click.option(
    "--parallel",
    "-p",
    default=1,
    show_default=True,
    help="Runs at a time (one CPU thread each when > 1).",
)
@click.option("--dry-run", is_flag=True, help="Print the commands of the runs still to do.")
def sweep(plan, runs_dir, parallel, dry_run) -> None:
    """Run the experiment of PLAN (YAML): pre-training, then fine-tuning from scratch and from
    each pre-trained model over tasks, seeds and training-set sizes. Resumable: finished runs
    are skipped, interrupted ones continue."""
    from trainer.sweep import load_plan, run_sweep

    spec = {**load_plan(plan), "plan_file": plan}
    target = runs_dir or spec.get("runs_dir")
    if not target:
        raise click.UsageError("--runs-dir is required (or 'runs_dir' in the plan)")
    counts = run_sweep(spec, target, parallel=parallel, dry_run=dry_run)
    click.echo(
        f"{counts['done']} runs done, {counts['failed']} failed, {counts['waiting']} not done"
    )
    if counts["failed"]:
        sys.exit(1)


@cli.command()
@click.argument("runs_dir")
@click.option(
    "--out",
    default=None,
    help="Output folder, or a .md file with figures in a folder of the same name "
    "(default RUNS_DIR/report).",
)
@click.option("--no-tsne", is_flag=True, help="Skip the t-SNE map (needs embeddings).")
def report(runs_dir, out, no_tsne) -> None:
    """Tables (paper's Table 2 layout) and figures from a sweep's runs."""
    from trainer.report import write_report

    path = write_report(runs_dir, out, tsne=not no_tsne)
    click.echo(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    from schemas import SchemaVersionError, StoreError
    from trainer.train import TrainingError

    try:
        cli.main(args=argv, prog_name="fp-train", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("fp-train: aborted", err=True)
        return 130
    except click.UsageError as err:
        hint = f" (see: fp-train {err.ctx.command.name} --help)" if err.ctx else ""
        click.echo(f"fp-train: error: {err.format_message()}{hint}", err=True)
        return 2
    except (TrainingError, StoreError, SchemaVersionError, ValueError, FileNotFoundError) as err:
        click.echo(f"fp-train: error: {err}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("fp-train: interrupted; continue with the same command and --resume", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
