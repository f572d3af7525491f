"""``fp-train``'s entry point: the trainer's commands plus ``predict``, which needs the builder.

``trainer.cli`` never imports the builder; ``predict`` turns raw structures into graphs with
it, so it is registered here, where the two parts meet (:mod:`fingerprint_pretrain.api`).
"""

from __future__ import annotations

import sys

import click

from fingerprint_pretrain.trainer import cli as trainer_cli


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--checkpoint",
    required=True,
    help="Fine-tuned checkpoint file, or a zoo model name (fp-train models).",
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Predictions CSV to write."
)
@click.option(
    "--targets-csv",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Known targets of folders/files of structures (id column + target columns): adds "
    "target and error columns and the MAE.",
)
@click.option("--id-column", default=None, help="Id column of CSV inputs / of --targets-csv.")
@click.option(
    "--batch-size",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Structures per forward pass.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N, mps.")
@click.option(
    "--jobs",
    "-j",
    default=1,
    show_default=True,
    type=int,
    help="Builder worker processes for raw inputs (-1: all cores).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def predict_command(
    inputs, checkpoint, out, targets_csv, id_column, batch_size, device, jobs, quiet
) -> None:
    """Predict the fine-tuned property for INPUTS: stores, or raw structures (CIF/POSCAR
    files, folders or quoted globs of them, and every format fp-build reads). Graphs are built
    with the checkpoint's own settings. Writes one row per structure to --out (prediction with
    its unit; target and error where known) and the structures that could not be read, with
    the reason, to <out>.rejected.csv."""
    from fingerprint_pretrain.api import predict
    from fingerprint_pretrain.builder.build import BuildError
    from fingerprint_pretrain.trainer.errors import TrainingError

    if jobs == 0 or jobs < -1:
        raise click.BadParameter("must be -1 (all cores) or >= 1", param_hint="--jobs")
    try:
        table = predict(
            list(inputs),
            checkpoint,
            targets_csv=targets_csv,
            id_column=id_column,
            batch_size=batch_size,
            device=device,
            jobs=jobs,
            progress=not quiet,
        )
    except BuildError as err:
        raise TrainingError(str(err)) from None
    rejected = table.write(out)
    click.echo(table.summary())
    click.echo(
        f"wrote {out}" + (f"; rejected structures and reasons: {rejected}" if rejected else "")
    )


trainer_cli.cli.add_command(predict_command)


def train_main(argv: list[str] | None = None) -> int:
    """``fp-train``: every trainer command, and ``predict``."""
    return trainer_cli.main(argv)


if __name__ == "__main__":
    sys.exit(train_main())
