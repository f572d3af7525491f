"""``fp-build``: build, extend, inspect, verify and export stores.

Errors in inputs or options end the command with one line on stderr (``fp-build: error: ...``)
and exit status 2 (usage) or 1 (anything else); never a traceback for a user mistake.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click
from fingerprint_pretrain.builder import __version__
from fingerprint_pretrain.builder.descriptors.registry import AUTO_COMPRESS_MIN_DIM
from fingerprint_pretrain.schemas.record import CODECS

CODEC_CHOICES = ("auto", *CODECS)


def _parse_units(pairs: tuple[str, ...]) -> dict[str, str]:
    units = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not COLUMN=UNIT", param_hint="--target-unit")
        col, unit = pair.split("=", 1)
        units[col] = unit
    return units


def _jobs(ctx, param, value: int) -> int:
    """``--jobs``: -1 (all cores) or a positive number of worker processes."""
    if value == -1 or value >= 1:
        return value
    raise click.BadParameter(f"{value} is not -1 (all cores) or a positive number of workers")


def _positive_finite(ctx, param, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value} is not a finite number > 0")
    return value


JOBS_HELP = "Worker processes (-1 = all cores)."


def _with_options(*options):
    """One decorator applying click ``options`` (or groups of them) in the order given, which
    is their order in ``--help``."""

    def apply(function):
        for option in reversed(options):
            function = option(function)
        return function

    return apply


_jobs_option = click.option(
    "--jobs", "-j", default=-1, show_default=True, callback=_jobs, help=JOBS_HELP
)
_quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")

#: ``--dtype`` and ``--codec``: how ``build`` and ``add`` store label sets.
_label_storage_options = _with_options(
    click.option(
        "--dtype",
        type=click.Choice(["float32", "float16"]),
        default="float32",
        show_default=True,
        help="Storage dtype of the label sets (float16 refused where values exceed its range).",
    ),
    click.option(
        "--codec",
        type=click.Choice(CODEC_CHOICES),
        default="auto",
        show_default=True,
        help=f"Label compression; auto = byte shuffle + Zstandard (shuffle-zstd) for sets of >= "
        f"{AUTO_COMPRESS_MIN_DIM} features, raw below; shuffle-zlib needs only the Python "
        "standard library to decode.",
    ),
)

#: ``--backend`` and ``--scheduler``: where ``build`` and ``add`` run their workers.
_worker_options = _with_options(
    click.option(
        "--backend",
        type=click.Choice(["loky", "dask"]),
        default="loky",
        show_default=True,
        help="joblib backend.",
    ),
    click.option("--scheduler", default=None, help="Dask scheduler address (default: local)."),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fp-build")
def cli() -> None:
    """Build versioned stores of periodic graphs and structural-fingerprint labels."""


#: The options of ``fp-build build``, in ``--help`` order.
_build_options = _with_options(
    click.option("--out", "-o", required=True, help="Store directory to create (e.g. mp.lmdb)."),
    click.option(
        "--cutoff",
        default=8.0,
        show_default=True,
        callback=_positive_finite,
        help="Neighbour cutoff, Å (> 0).",
    ),
    _jobs_option,
    click.option("--target", "-t", "targets", multiple=True, help="Target column (repeatable)."),
    click.option("--target-unit", "units", multiple=True, help="COLUMN=UNIT for the manifest."),
    click.option("--id-column", default=None, help="Id column (default: material_id or id)."),
    click.option("--cif-column", default="cif", show_default=True, help="CIF column of a CSV."),
    click.option(
        "--targets-csv",
        default=None,
        type=click.Path(dir_okay=False),
        help="CSV of targets for folders/files of structures (CIF, POSCAR): an id column "
        "(--id-column; ids are file names without extension) and the --target columns.",
    ),
    click.option("--format", "fmt", default=None, help="Input format (default: from the name)."),
    click.option(
        "--descriptor",
        "-d",
        "descriptors",
        multiple=True,
        help="Label set to compute while building (repeatable, or 'all').",
    ),
    _label_storage_options,
    click.option("--strict", is_flag=True, help="Stop at the first bad structure."),
    click.option(
        "--allow-missing-targets",
        is_flag=True,
        help="Keep structures with missing targets (stored as NaN).",
    ),
    _worker_options,
    click.option(
        "--chunk-size",
        type=click.IntRange(min=1),
        default=32,
        show_default=True,
        help="Structures per task (≥ 1).",
    ),
    click.option("--overwrite", is_flag=True, help="Replace an existing store."),
    _quiet_option,
)


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@_build_options
def build(inputs: tuple[str, ...], **values) -> None:
    """Build a store from INPUTS (CSV with CIFs, CGCNN folder, extxyz, ASE db, pymatgen or
    MatBench JSON, MatDeepLearn JSON, folders or files of CIF/POSCAR; quoted glob patterns are
    expanded). Re-running the same command resumes an interrupted build."""
    from fingerprint_pretrain.builder.build import build_store, summarize

    opts = _to_build_options(inputs, values)
    manifest = build_store(opts)
    click.echo(f"built {opts.out}")
    click.echo(summarize(manifest))
    if manifest["counts"]["rejected"]:
        click.echo(f"rejected structures and reasons: {Path(opts.out) / 'rejected.csv'}")


def _to_build_options(inputs: tuple[str, ...], values: dict):
    """``fp-build build``'s INPUTS and option values -> :class:`builder.build.BuildOptions`.

    The options whose click names are not :class:`~builder.build.BuildOptions` fields, or
    whose values need converting, are taken out of ``values`` first; every other option
    (``out``, ``cutoff``, ``jobs``, ``id_column``, ``strict``, ...) is a field of the same
    name.
    """
    from fingerprint_pretrain.builder.build import BuildOptions
    from fingerprint_pretrain.builder.descriptors.registry import resolve_names, storage_codecs
    from fingerprint_pretrain.builder.readers import expand_inputs

    values = dict(values)
    names = resolve_names(values.pop("descriptors"))
    return BuildOptions(
        inputs=expand_inputs(inputs),
        targets=list(values.pop("targets")),
        target_units=_parse_units(values.pop("units")),
        descriptors=names,
        descriptor_dtype=values.pop("dtype"),
        descriptor_codec=storage_codecs(names, values.pop("codec")),
        progress=not values.pop("quiet"),
        **values,
    )


@cli.command()
@click.argument("store")
@click.option(
    "--descriptor",
    "-d",
    "descriptors",
    multiple=True,
    required=True,
    help="Label set to add (repeatable, or 'all').",
)
@click.option("--force", is_flag=True, help="Recompute sets already present.")
@_jobs_option
@_label_storage_options
@_worker_options
@_quiet_option
def add(store, descriptors, force, jobs, dtype, codec, backend, scheduler, quiet) -> None:
    """Add label sets to an existing STORE without touching its graphs (resumable)."""
    from fingerprint_pretrain.builder.add import add_descriptors
    from fingerprint_pretrain.builder.descriptors.registry import resolve_names, storage_codecs

    names = resolve_names(descriptors)
    manifest = add_descriptors(
        store,
        names,
        jobs=jobs,
        backend=backend,
        scheduler=scheduler,
        force=force,
        dtype=dtype,
        codec=storage_codecs(names, codec),
        progress=not quiet,
    )
    click.echo(f"{store}: descriptor sets {list(manifest['descriptors'])}")
    click.echo(f"content hash {manifest['content_hash']}")


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
def info(store, as_json) -> None:
    """Summarise a STORE: counts, sources, targets, label sets, sizes and bytes per atom."""
    from fingerprint_pretrain.builder.info import describe
    from fingerprint_pretrain.schemas import read_manifest

    if as_json:
        click.echo(json.dumps(read_manifest(store), indent=1))
    else:
        click.echo(describe(store))


@cli.command()
@click.argument("store")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def verify(store, quiet) -> None:
    """Recompute STORE's content hash from its records; exit 1 if it differs from the
    manifest."""
    from fingerprint_pretrain.builder.info import verify_store

    ok, lines = verify_store(store, progress=not quiet)
    for line in lines:
        click.echo(line)
    if not ok:
        sys.exit(1)


@cli.command()
@click.argument("store")
def convert(store) -> None:
    """Convert a single-file STORE (schema 1, data.mdb) into a store of parts, in place
    (records and content hash unchanged; safe to interrupt: rerun it)."""
    from fingerprint_pretrain.builder.parts import convert as convert_store

    manifest, converted = convert_store(store)
    if not converted:
        click.echo(f"{store}: already a store of parts (schema {manifest['schema_version']})")
        return
    parts = ", ".join(entry["file"] for entry in manifest["parts"].values())
    click.echo(f"{store}: converted to parts ({parts})")
    click.echo(f"content hash {manifest['content_hash']}")


@cli.command()
@click.argument("store")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["zarr", "extxyz"]),
    required=True,
    help="zarr: the columnar twin (same content hash); extxyz: structures + targets.",
)
@click.option("--out", "-o", required=True, help="Output path (e.g. mp.zarr, mp.extxyz).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def export(store, fmt, out, quiet) -> None:
    """Export STORE to its Zarr twin or to extended XYZ."""
    from fingerprint_pretrain.builder.export import export_extxyz, export_zarr
    from fingerprint_pretrain.schemas import open_store

    s = open_store(store)
    if Path(out).exists():
        raise click.UsageError(f"{out} already exists")
    (export_zarr if fmt == "zarr" else export_extxyz)(s, out, progress=not quiet)
    click.echo(f"wrote {out}")


@cli.command("descriptors")
def list_descriptors() -> None:
    """List the label sets that can be computed, with their dimensions."""
    from fingerprint_pretrain.builder.descriptors.registry import REGISTRY

    click.echo(f"{'name':<11} {'family':<7} {'dim':>5} {'radius Å':>9}  parameters")
    for spec in REGISTRY.values():
        params = ", ".join(f"{k}={_short(v)}" for k, v in spec.params.items())
        click.echo(f"{spec.name:<11} {spec.family:<7} {spec.dim:>5} {spec.radius:>9.2f}  {params}")


# --------------------------------------------------------------------------------------------
# The paper's datasets (builder/datasets): registry, fetch, make-datasets
# --------------------------------------------------------------------------------------------
def _dataset_options(function):
    """Options shared by ``fetch`` and ``make-datasets``."""
    options = [
        click.option(
            "--from-dir",
            "from_dirs",
            multiple=True,
            type=click.Path(file_okay=False),
            help="Folder with local copies of the files (a lab mirror); repeatable.",
        ),
        click.option("--offline", is_flag=True, help="Never download; use local copies only."),
        click.option("--out", "-o", default=None, help="Folder of the stores [$FP_DATA/stores]."),
        click.option("--cache", default=None, help="Download folder [$FP_DATA/downloads]."),
        click.option(
            "--jobs",
            "-j",
            default=-1,
            show_default=True,
            callback=_jobs,
            help="Workers per build (-1 = all cores).",
        ),
        click.option(
            "--descriptor",
            "-d",
            "descriptors",
            multiple=True,
            default=("all",),
            show_default=True,
            help="Label sets of the stores (repeatable; 'none' for graphs only).",
        ),
        click.option("--overwrite", is_flag=True, help="Rebuild a store of another source."),
        click.option("--no-verify", is_flag=True, help="Skip re-hashing finished stores."),
        _quiet_option,
    ]
    return _with_options(*options)(function)


def _make_options(from_dirs, offline, out, cache, jobs, descriptors, overwrite, no_verify, quiet):
    from fingerprint_pretrain.builder.datasets.make import MakeOptions

    names = [] if list(descriptors) == ["none"] else list(descriptors)
    return MakeOptions(
        out=out,
        cache=cache,
        from_dirs=list(from_dirs),
        offline=offline,
        jobs=jobs,
        descriptors=names,
        verify=not no_verify,
        overwrite=overwrite,
        progress=not quiet,
        log=click.echo,
    )


@cli.command("datasets")
@click.option(
    "--from-dir", "from_dirs", multiple=True, type=click.Path(file_okay=False), help="Mirror."
)
@click.option("--out", "-o", default=None, help="Folder of the stores [$FP_DATA/stores].")
@click.option("--cache", default=None, help="Download folder [$FP_DATA/downloads].")
@click.option("--verbose", "-v", is_flag=True, help="Sources' URLs, checksums and notes too.")
def list_datasets(from_dirs, out, cache, verbose) -> None:
    """List the paper's datasets (registry) and what is present locally."""
    from fingerprint_pretrain.builder.datasets.make import MakeOptions, status

    opts = MakeOptions(out=out, cache=cache, from_dirs=list(from_dirs))
    click.echo(f"downloads {opts.cache}   stores {opts.out}")
    for row in status(opts):
        d = row["dataset"]
        click.echo(f"{d.name:<11} {d.role:<8} {d.size:>7,}  {d.prop or d.title}")
        for src, s in zip(d.sources, row["sources"]):
            files = f"files {s['present']}/{s['files']} here" if s["files"] else "API"
            built = s["store"]
            if built and built["source"] not in (None, src.name):
                store = f"(store {Path(built['path']).name} is from source {built['source']})"
            elif built:
                store = (
                    f"store {Path(built['path']).name} ({built['records']:,} records, "
                    f"{built['descriptors']} label sets)"
                )
            else:
                store = "no store"
            tag = " stand-in subset" if s["subset"] else ""
            click.echo(
                f"    {src.name:<9} {src.kind:<8} {files:<16} {store}  "
                f"target {d.target_of(src) or '-'}{tag}"
            )
            if verbose:
                for f in src.files:
                    click.echo(f"        {f.name}: {', '.join(f.urls) or 'no URL'}; {f.checksum}")
                click.echo(f"        {src.note}")
                click.echo(f"        {src.verified}")


@cli.command("fetch")
@click.argument("names", nargs=-1, required=True)
@click.option("--source", default=None, help="Which source of the registry entry to use.")
@click.option("--download-only", is_flag=True, help="Get and check the files; build nothing.")
@click.option(
    "--labels",
    multiple=True,
    help="Published stores: label sets to download besides the graphs (repeatable or "
    "comma-separated; default: all; 'none': graphs only).",
)
@click.option(
    "--store",
    "store_path",
    default=None,
    help="Where to put the store fetched from one URL [--out folder / its name].",
)
@click.option(
    "--build-on-fail",
    is_flag=True,
    help="Build a registry dataset from its raw data when its published store cannot be had.",
)
@_dataset_options
def fetch_command(names, source, download_only, labels, store_path, build_on_fail, **options):
    """Get the dataset(s) NAMES of the registry (fp-build datasets lists them): download (or
    find locally), verify, build and split; a dataset with a published store is downloaded
    instead. A NAME that is a URL (http://, https://, file://) or a folder holding a
    manifest.json is a published store (fp-build pack): its manifest, the graphs and the
    --labels sets are downloaded (resumed, retried, each part's sha256 checked before use)
    into --store or --out/<its name>; fetching again with more --labels adds just those."""
    from fingerprint_pretrain.builder.datasets.make import fetch_dataset, summary_table
    from fingerprint_pretrain.builder.publish import fetch_store, is_store_source

    opts = _make_options(**options)
    sets = [s for item in labels for s in item.split(",") if s]
    opts.labels = None if not sets else [] if sets == ["none"] else sets
    opts.build_on_fail = build_on_fail
    urls = [n for n in names if is_store_source(n)]
    if store_path and len(urls) != 1:
        raise click.UsageError("--store needs exactly one URL (or folder) among NAMES")
    rows = []
    for name in names:
        if name not in urls:
            rows.append(fetch_dataset(name, opts, source, download_only=download_only))
            continue
        result = fetch_store(
            name,
            store=store_path,
            out_dir=opts.out,
            labels=opts.labels,
            verify=opts.verify,
            overwrite=opts.overwrite,
            progress=opts.progress,
            log=click.echo,
        )
        got = sum(result.fetched.values())
        click.echo(
            f"fetched {result.store} from {result.url}: {len(result.fetched)} parts "
            f"({got:,} bytes) downloaded, {len(result.kept)} already here, "
            f"{result.seconds:.1f} s"
            + (f"; label sets not fetched: {result.absent}" if result.absent else "")
        )
    if rows and not download_only:
        click.echo(summary_table(rows))


@cli.command()
@click.argument("store")
@click.option("--out", "-o", required=True, help="Folder to write (created; e.g. upload/mp).")
@click.option("--overwrite", is_flag=True, help="Replace the files of a non-empty --out.")
def pack(store, out, overwrite) -> None:
    """Write what a data repository (Zenodo, a web server, an object store) needs to serve
    STORE: manifest.json, its part files (hard-linked or copied), SHA256SUMS and README.txt.
    Every part is checked against the manifest first (size, sha256); a store with damaged or
    absent parts is refused. Fetch the result with fp-build fetch URL."""
    from fingerprint_pretrain.builder.publish import pack_store

    pack_store(store, out, overwrite=overwrite, log=click.echo)


@cli.command("make-datasets")
@click.option("--only", multiple=True, help="Just these datasets (repeatable).")
@_dataset_options
def make_datasets_command(only, **options) -> None:
    """Every dataset of the registry that can be had: downloaded or found locally, verified,
    built with all label sets, split. Re-running skips what is complete; missing datasets are
    listed with how to get them. Exit status 1 if a dataset failed."""
    from fingerprint_pretrain.builder.datasets.make import make_datasets, summary_table

    opts = _make_options(**options)
    rows = make_datasets(opts, list(only) or None)
    click.echo("")
    click.echo(summary_table(rows))
    if any(r["status"] == "failed" for r in rows):
        sys.exit(1)


def _short(value) -> str:
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return f"[{value[0]}, {value[1]}, ..., {value[-1]}] ({len(value)})"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning known errors into one-line messages."""
    from fingerprint_pretrain.builder.build import BuildError
    from fingerprint_pretrain.builder.readers import InputError
    from fingerprint_pretrain.schemas import RecordError, StoreError

    try:
        cli.main(args=argv, prog_name="fp-build", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("fp-build: aborted", err=True)
        return 130
    except click.UsageError as err:
        hint = f" (see: fp-build {err.ctx.command.name} --help)" if err.ctx else ""
        click.echo(f"fp-build: error: {err.format_message()}{hint}", err=True)
        return 2
    except click.ClickException as err:
        click.echo(f"fp-build: error: {err.format_message()}", err=True)
        return 1
    except (BuildError, InputError, StoreError, RecordError, KeyError, FileExistsError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        click.echo(f"fp-build: error: {message}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("fp-build: interrupted; re-run the same command to resume", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
