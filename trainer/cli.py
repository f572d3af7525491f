"""``fp-train``: pre-train, fine-tune, evaluate, embed, list the model zoo, report, convert old
checkpoints.

Every :class:`~trainer.config.TrainConfig` field is a flag (``--batch-size``, ``--lr``,
``--max-neighbors`` ...; booleans as ``--amp/--no-amp``) with the paper's value as default, and
a key of the JSON or YAML file given with ``--config`` (flags win over the file; ``fp-train
sweep`` writes one per run). Each flag's help, unit, default (that of the command's mode) and
allowed values come from the field itself (:mod:`trainer.config`). Errors end with one line on
stderr, ``fp-train: error: ...``; a bad value or a refused run directory exits with status 2,
a failed run with 1.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path

import click
from fingerprint_pretrain.trainer.config import (
    MODEL_DEFAULTS,
    ConfigError,
    TrainConfig,
    load_config_file,
)

# Fields set by each command's own arguments rather than generic flags.
_OWN = {"mode", "store", "labels", "init"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fingerprint-pretrain")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def _shown_default(value) -> str:
    """A TrainConfig default as ``--help`` shows it."""
    if value is None:
        return "none"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def _config_options(mode: str):
    """Add one click option per TrainConfig field, with the field's help, unit, allowed values
    and its default for ``mode`` (shown only: defaults are applied later, so a flag given
    explicitly can be told from one left out)."""
    defaults = TrainConfig.defaults(mode)
    hints = typing.get_type_hints(TrainConfig)

    def decorate(func):
        for f in reversed(dataclasses.fields(TrainConfig)):
            if f.name in _OWN or mode not in f.metadata.get("modes", (mode,)):
                continue
            flag = "--" + f.name.replace("_", "-")
            hint = _unoptional(hints[f.name])
            default = getattr(defaults, f.name)
            # a model field's default is its model's (MODEL_DEFAULTS)
            per_model = {m: own[f.name] for m, own in MODEL_DEFAULTS.items() if f.name in own}
            if len(per_model) == 1:
                (default,) = per_model.values()
            if hint is bool:
                default = flag if default else f"--no-{f.name.replace('_', '-')}"
            # click puts a string default in parentheses; the bracket is written here instead
            shown = [f"default: {_shown_default(default)}"]
            if len(per_model) > 1:
                shown = ["default: " + ", ".join(f"{m} {v}" for m, v in per_model.items())]
            if f.metadata.get("unit"):
                shown.append(f"unit: {f.metadata['unit']}")
            help_text = f"{f.metadata['help']}  [{'; '.join(shown)}]"
            if hint is bool:
                func = click.option(
                    f"{flag}/--no-{f.name.replace('_', '-')}", f.name, default=None, help=help_text
                )(func)
                continue
            if typing.get_origin(hint) is list:
                kind, multiple = float, True
            elif typing.get_origin(hint) is typing.Literal:
                kind, multiple = click.Choice(typing.get_args(hint)), False
            else:
                inner = [a for a in typing.get_args(hint) if a is not type(None)]
                kind, multiple = (inner[0] if inner else hint), False
            func = click.option(
                flag,
                f.name,
                type=kind,
                default=None,
                multiple=multiple,
                help=help_text,
            )(func)
        return click.option(
            "--config",
            "config_file",
            default=None,
            help="JSON (.json) or YAML file of configuration keys (any option's name, e.g. "
            "written by fp-train sweep; flags given win over it).",
        )(func)

    return decorate


def _unoptional(hint):
    """``X`` for ``X | None`` (so ``bool | None`` is a --flag/--no-flag and ``Literal[...] |
    None`` a choice); ``hint`` otherwise."""
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(inner) == 1:
        return inner[0]
    return hint


def _flag(err: ConfigError) -> str:
    """A configuration error as the command line names it (``--max-train must be >= 1 ...``)."""
    return f"--{err.name.replace('_', '-')} {err.problem}"


def _make_config(mode: str, config_file, labels, store, init, options) -> TrainConfig:
    cfg = TrainConfig.defaults(mode)
    from_file = _config_file(config_file, mode) if config_file else {}
    try:
        cfg = cfg.updated(**from_file)
    except ConfigError as err:
        raise click.UsageError(f"{config_file}: {err.name} {err.problem}") from None
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
    # the file's keys again, so that a --model flag does not re-derive a model field it set
    explicit = {**from_file, **given}
    if explicit.get("init") and "model" not in explicit:
        # fine-tuning takes the model from --init: the model flags given are checked for it
        where = (explicit.get("run_dir", cfg.run_dir), explicit.get("resume", cfg.resume))
        explicit["model"] = _init_model(explicit["init"], *where)
    try:
        cfg = cfg.updated(mode=mode, **explicit)
    except ConfigError as err:
        raise click.UsageError(_flag(err)) from None
    if cfg.init:
        cfg = cfg.updated(init=str(_resolve(cfg.init)))
        cfg = cfg.updated(**_model_from_init(cfg, {**from_file, **given}))
    elif {**from_file, **given}.get("adapt_epochs"):
        raise click.UsageError("--adapt-epochs needs --init (the pre-trained model to adapt)")
    if not cfg.store:
        raise click.UsageError("--store is required (or 'store' in --config)")
    if not cfg.labels:
        what = "--descriptor" if mode == "pretrain" else "--target"
        raise click.UsageError(f"{what} is required (or 'labels' in --config)")
    _check_device(cfg.device)
    return cfg


def _config_file(path: str, mode: str) -> dict:
    """The keys of ``--config`` (:func:`trainer.config.load_config_file`); a file that does
    not parse, has an unknown key or names another mode is a usage error naming the file."""
    try:
        keys = load_config_file(path)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    if keys.pop("mode", mode) != mode:
        raise click.UsageError(f"{path}: mode is this command's ({mode}), not another")
    return keys


def _resolve(name_or_path) -> Path:
    """A checkpoint path or zoo name as a file (:func:`trainer.zoo.resolve`); an unknown name
    is a usage error listing the zoo's names."""
    from fingerprint_pretrain.trainer.zoo import UnknownModel, resolve

    try:
        return resolve(name_or_path)
    except UnknownModel as err:
        raise click.UsageError(str(err)) from None


def _check_device(name: str) -> None:
    """Usage error unless device ``name`` is present here (``auto`` always is)."""
    import torch

    if name in ("auto", "cpu"):
        return
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            have = f"{count} CUDA device(s): cuda:0 to cuda:{count - 1}" if count else "no CUDA"
            raise click.UsageError(f"--device {name}: this machine has {have}")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise click.UsageError("--device mps: Apple's MPS is not available on this machine")


def _init_source(init, run_dir, resume: bool) -> Path:
    """The checkpoint a run takes its model from: ``init`` (a file or zoo name), or the run's
    own ``last.pt`` when it resumes."""
    own = Path(run_dir) / "last.pt"
    return own if resume and own.exists() else _resolve(init)


def _init_model(init, run_dir, resume: bool) -> str:
    """The backbone (``--model``) of the checkpoint the run starts from."""
    from fingerprint_pretrain.trainer.checkpoint import load_checkpoint

    source = _init_source(init, run_dir, resume)
    return load_checkpoint(source)["model_args"].get("model", "et")


def _model_from_init(cfg: TrainConfig, given: dict) -> dict:
    """The model flags not given, taken from the checkpoint the run starts from (``--init``,
    or the run's own ``last.pt`` when it resumes); a given flag that differs is a usage error
    naming both values."""
    from fingerprint_pretrain.trainer.checkpoint import (
        ModelFlagConflict,
        architecture_from_checkpoint,
    )

    try:
        return architecture_from_checkpoint(_init_source(cfg.init, cfg.run_dir, cfg.resume), given)
    except ModelFlagConflict as err:
        raise click.UsageError(str(err)) from None


_DEVICE = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (a GPU if there is one), cpu, cuda, cuda:N or mps; must be present.",
)
_CHECKPOINT = click.option(
    "--checkpoint",
    required=True,
    help="Checkpoint file (best.pt / last.pt) or zoo model name (fp-train models).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(_version(), prog_name="fp-train")
def cli() -> None:
    """Pre-train a GNN (--model: TorchMD-Net's equivariant transformer, SchNet or PaiNN) on
    structural fingerprints and fine-tune it on properties, streaming fp-build stores."""


@cli.command()
@click.option("--store", default=None, help="Store with the descriptor labels.")
@click.option(
    "--descriptor", "-d", "labels", multiple=True, help="Label set(s) to regress (repeatable)."
)
@_config_options("pretrain")
def pretrain(store, labels, config_file, **options) -> None:
    """Node-level pre-training: predict every atom's descriptor vector."""
    from fingerprint_pretrain.trainer.train import train

    train(_make_config("pretrain", config_file, labels, store, None, options))


@cli.command()
@click.option("--store", default=None, help="Store with the property targets.")
@click.option("--target", "-t", "labels", multiple=True, help="Target name(s) (repeatable).")
@click.option(
    "--init",
    default=None,
    help="Pre-trained checkpoint file or zoo model name (fp-train models); omit: from scratch. "
    "The model (--model, size, cutoff, neighbours) comes from it: give no model flag, or only "
    "ones equal to the checkpoint's. With --adapt-epochs K its pre-training first continues "
    "on this store's structures (run-dir/adapt/).",
)
@_config_options("finetune")
def finetune(store, labels, init, config_file, **options) -> None:
    """Graph-level fine-tuning (from a pre-trained checkpoint, or the from-scratch baseline)."""
    from fingerprint_pretrain.trainer.train import train

    train(_make_config("finetune", config_file, labels, store, init, options))


@cli.command()
@_CHECKPOINT
@click.option("--store", default=None, help="Store to evaluate on (default: the run's).")
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test", "all"]),
    default="test",
    show_default=True,
    help="Split of the run's store ('all' for another store).",
)
@click.option("--out", default=None, help="Predictions CSV (graph tasks); default: none.")
@_DEVICE
def evaluate(checkpoint, store, split, out, device) -> None:
    """MAE of a checkpoint on a split (or a whole store), in the labels' units."""
    from fingerprint_pretrain.trainer.inference import evaluate_checkpoint

    _check_device(device)
    result = evaluate_checkpoint(_resolve(checkpoint), store, split, out, device)
    click.echo(f"MAE {result['test_mae']:.6g} on {result['test_structures']} structures")


@cli.command()
@_CHECKPOINT
@click.option("--store", required=True, help="Store whose structures to embed.")
@click.option("--out", required=True, help="Output .npz: ids (R,), embeddings (R, H).")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Structures per forward pass.",
)
@_DEVICE
def embed(checkpoint, store, out, batch_size, device) -> None:
    """Per-structure embeddings (sum of the final node features) to a file."""
    from fingerprint_pretrain.trainer.inference import embed_store

    _check_device(device)
    n, dim = embed_store(_resolve(checkpoint), store, out, batch_size, device)
    click.echo(f"wrote {out}: {n} structures × {dim} features")


@cli.command()
@click.argument("name", required=False)
def models(name) -> None:
    """The model zoo: pre-trained checkpoints shipped with fp-train, usable by name (--init
    NAME, --checkpoint NAME). Without NAME: one line per model; with NAME: its model card."""
    from fingerprint_pretrain.trainer import zoo

    if name is None:
        click.echo(zoo.format_table(zoo.entries()))
        return
    try:
        found = zoo.entry(name)
    except zoo.UnknownModel as err:
        raise click.UsageError(str(err)) from None
    click.echo(zoo.format_card(found))


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
    from fingerprint_pretrain.trainer.checkpoint import convert_checkpoint as convert

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
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runs at a time (one CPU thread each when > 1).",
)
@click.option("--dry-run", is_flag=True, help="Print the commands of the runs still to do.")
def sweep(plan, runs_dir, parallel, dry_run) -> None:
    """Run the experiment of PLAN (YAML): pre-training, then fine-tuning from scratch and from
    each pre-trained model over tasks, seeds and training-set sizes. Resumable: finished runs
    are skipped, interrupted ones continue."""
    from fingerprint_pretrain.trainer.harness.sweep import load_plan, run_sweep

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
@click.option("--no-tsne", is_flag=True, help="Sweeps: skip the t-SNE map (needs embeddings).")
@click.option(
    "--store",
    default=None,
    help="One pre-training run: the store to compute its test error on (default: the run's; "
    "it must be the same store).",
)
@_DEVICE
def report(runs_dir, out, no_tsne, store, device) -> None:
    """Report a sweep (tables in the paper's Table 2 layout, figures) or one run: a run
    directory (config.json, metrics.csv) gets its learning curve, metrics and, for
    fine-tuning, a parity plot; for pre-training, the test error per label set and feature
    group in standardised label units (needs the run's store)."""
    from fingerprint_pretrain.trainer.harness.report import write_report
    from fingerprint_pretrain.trainer.harness.run_report import is_run_dir, write_run_report

    if is_run_dir(runs_dir):
        _check_device(device)
        path = write_run_report(runs_dir, out, store=store, device=device)
    else:
        path = write_report(runs_dir, out, tsne=not no_tsne)
    click.echo(f"wrote {path}")


@cli.command("report-scale")
@click.argument("runs_dirs", nargs=-1, required=True)
@click.option("--init", "init", required=True, help="The label set pre-trained in every sweep.")
@click.option(
    "--out",
    required=True,
    help="Output folder, or a .md file with its figure in a folder of the same name.",
)
def report_scale(runs_dirs, init, out) -> None:
    """Fine-tuning gain against pre-training set size: one row per sweep (RUNS_DIRS, each
    pre-trained INIT on its own number of structures), one column per task and training size
    every sweep finished, each gain against that sweep's own from-scratch runs."""
    from fingerprint_pretrain.trainer.harness.scale import write_scale_report

    click.echo(f"wrote {write_scale_report(list(runs_dirs), init, out)}")


@cli.command("report-backbones")
@click.argument("runs_dirs", nargs=-1, required=True)
@click.option(
    "--init",
    "inits",
    multiple=True,
    required=True,
    help="A pre-trained label set to report (repeatable), e.g. --init eadset1.",
)
@click.option("--out", required=True, help="Output .md file, or a folder that gets report.md.")
def report_backbones(runs_dirs, inits, out) -> None:
    """Fine-tuning gain per backbone: one row per sweep (RUNS_DIRS, each pre-training one
    --model) and label set, one column per task point every row finished, each gain against
    that backbone's own from-scratch runs."""
    from fingerprint_pretrain.trainer.harness.backbones import write_backbone_report

    click.echo(f"wrote {write_backbone_report(list(runs_dirs), list(inits), out)}")


def main(argv: list[str] | None = None) -> int:
    from fingerprint_pretrain.schemas import SchemaVersionError, StoreError
    from fingerprint_pretrain.trainer.train import TrainingError

    try:
        cli.main(args=argv, prog_name="fp-train", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("fp-train: aborted", err=True)
        return 130
    except click.UsageError as err:
        hint = f" (see: fp-train {err.ctx.command.name} --help)" if err.ctx else ""
        click.echo(f"fp-train: error: {err.format_message()}{hint}", err=True)
        return 2
    except ConfigError as err:  # a bad value, or a run directory that holds a run
        click.echo(f"fp-train: error: {_flag(err)}", err=True)
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
