"""Datasets -> finished, verified, split stores (``fp-build fetch``, ``fp-build make-datasets``,
``make datasets``).

For each dataset: choose a source (:func:`resolve`), get its files (:class:`Fetcher`: cache,
mirrors, download; all checksummed), convert them if the source needs it (:mod:`prepare`), build
the store with graphs and every descriptor set (:func:`builder.build.build_store`, resumable),
add label sets it lacks (:func:`builder.add.add_descriptors`), check it (:func:`verify_store`),
and write its splits next to it. Everything is skipped that is already done: re-running on
complete stores only re-verifies them.

Layout of the output folder (default ``$FP_DATA/stores``)::

    <store>.lmdb/            the store (manifest names the source file and its sha256)
    <store>.splits/          seed111.npz ... seed555.npz (train/val/test), matbench_fold0..4.npz
                             (train/test), splits.json; plain npz (allow_pickle=False)
    <store>.dataset.json     which datasets use it, the source, files and checksums, build time

Choice of source (unless ``--source``): the source the existing store was built from, if its
files are at hand; else the first full source whose files are local (cache or ``--from-dir``);
else (online) the first downloadable full source; else a stand-in subset found locally (its
store has its own name, e.g. ``perov5_subset``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fingerprint_pretrain.builder.build import BuildError, BuildOptions, build_store
from fingerprint_pretrain.builder.datasets.download import Fetched, Fetcher, data_home
from fingerprint_pretrain.builder.datasets.registry import DATASETS, Dataset, Source, get
from fingerprint_pretrain.builder.descriptors.registry import resolve_names, storage_codecs
from fingerprint_pretrain.builder.publish import FetchResult, base_url, fetch_store, fetched_from
from fingerprint_pretrain.builder.readers import InputError
from fingerprint_pretrain.builder.sizes import disk_bytes, human_bytes
from fingerprint_pretrain.schemas.manifest import (
    MANIFEST_NAME,
    StoreError,
    read_manifest,
    write_json_atomic,
)
from fingerprint_pretrain.schemas.splits import (
    MATBENCH_SEED,
    PAPER_SEEDS,
    kfold_splits,
    random_split,
)

__all__ = [
    "MakeOptions",
    "NotAvailable",
    "Resolved",
    "fetch_dataset",
    "fetch_prebuilt",
    "how_to_get",
    "make_datasets",
    "resolve",
    "status",
    "write_splits",
]

PAPER_FRACTIONS = (0.6, 0.2, 0.2)


class NotAvailable(BuildError):
    """No source of a dataset can be had with the options given."""


@dataclass
class MakeOptions:
    """Options of ``fp-build fetch`` / ``make-datasets``.

    Attributes:
        out: folder of the stores (default ``$FP_DATA/stores``).
        cache: download folder (default ``$FP_DATA/downloads``).
        from_dirs: local mirrors searched for the files.
        offline: never download.
        jobs: worker processes per build (-1: all cores).
        descriptors: label sets of every store (default all nine).
        verify: re-check finished stores' content hashes.
        overwrite: rebuild a store that was built from another source or is damaged.
        progress: progress bars.
        log: where messages go.
        labels: label sets to download from a published store (``Source.prebuilt``); None:
            those of ``descriptors`` (all that were published for the default ``all``).
        build_on_fail: build from the raw data when a published store cannot be fetched
            (default: the failure is the dataset's error, never hidden behind a long build).
    """

    out: Path | None = None
    cache: Path | None = None
    from_dirs: list[Path] = field(default_factory=list)
    offline: bool = False
    jobs: int = -1
    descriptors: list[str] = field(default_factory=lambda: ["all"])
    verify: bool = True
    overwrite: bool = False
    progress: bool = True
    retries: int = 4
    backoff: float = 1.0
    log: Callable[[str], None] = print
    labels: list[str] | None = None
    build_on_fail: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out) if self.out else data_home() / "stores"
        self.cache = Path(self.cache) if self.cache else data_home() / "downloads"
        # absolute, so that manifests and records name the files unambiguously
        self.from_dirs = [Path(d).expanduser().resolve() for d in self.from_dirs]

    def fetcher(self) -> Fetcher:
        return Fetcher(
            self.cache,
            self.from_dirs,
            offline=self.offline,
            progress=self.progress,
            retries=self.retries,
            backoff=self.backoff,
            log=self.log,
        )

    @property
    def prepared(self) -> Path:
        """Converted build inputs (pickle-free extxyz), next to the downloads."""
        return self.cache / "prepared"


@dataclass
class Resolved:
    """A dataset with the source chosen and its files at hand."""

    dataset: Dataset
    source: Source
    files: list[Fetched]


# --------------------------------------------------------------------------------------------
# Choosing a source
# --------------------------------------------------------------------------------------------
def _sidecar(out: Path, store: str) -> Path:
    return out / f"{store}.dataset.json"


def _local(source: Source, fetcher: Fetcher) -> list[Fetched] | None:
    if source.kind == "mp-api":
        return None
    found = []
    for spec in source.files:
        hit, notes = fetcher.locate(spec)
        for note in notes:
            fetcher.log(f"  note: {note}")
        if hit is None:
            return None
        found.append(hit)
    return found


def resolve(
    dataset: Dataset, opts: MakeOptions, source_name: str | None = None, fetcher=None
) -> Resolved:
    """Choose the source of ``dataset`` and get its files (see the module docstring).

    Raises:
        NotAvailable: nothing usable; the message says how to get the dataset.
        DownloadError / ChecksumError: a download failed or did not match.
    """
    fetcher = fetcher or opts.fetcher()
    if source_name:
        source = dataset.source(source_name)
        if source.kind == "mp-api":
            return Resolved(dataset, source, [])
        return Resolved(dataset, source, [fetcher.fetch(spec) for spec in source.files])
    candidates = [s for s in dataset.sources if s.kind != "mp-api"]
    built = [
        s.name
        for s in candidates
        if _sidecar(opts.out, s.store).is_file()
        and json.loads(_sidecar(opts.out, s.store).read_text()).get("source") == s.name
    ]
    for source in sorted(candidates, key=lambda s: (s.name not in built, s.subset)):
        if source.subset and not opts.offline and _downloadable(dataset):
            continue  # a stand-in only when the real data cannot be downloaded
        files = _local(source, fetcher)
        if files is not None:
            return Resolved(dataset, source, files)
    if not opts.offline:
        for source in candidates:
            if source.kind == "download" and not source.subset:
                return Resolved(dataset, source, [fetcher.fetch(spec) for spec in source.files])
    raise NotAvailable(f"{dataset.name}: no source available. " + " | ".join(how_to_get(dataset)))


def _downloadable(dataset: Dataset) -> bool:
    return any(s.kind == "download" and not s.subset for s in dataset.sources)


def how_to_get(dataset: Dataset) -> list[str]:
    """One line per source saying how to obtain it."""
    lines = []
    for s in dataset.sources:
        if s.kind == "download":
            files = ", ".join(f.name for f in s.files)
            lines.append(
                f"[{s.name}] fp-build fetch {dataset.name} --source {s.name} (downloads "
                f"{s.files[0].urls[0]}{' ...' if len(s.files) > 1 else ''}), or save it as "
                f"{files} in a folder given with --from-dir"
            )
        elif s.kind == "local":
            names = ", ".join(" or ".join([f.name, *(a for a, _ in f.aliases)]) for f in s.files)
            lines.append(f"[{s.name}] put {names} in --from-dir DIR: {s.note}")
        else:
            lines.append(
                f"[{s.name}] pip install '.[mp]'; export MP_API_KEY=...; fp-build fetch "
                f"{dataset.name} --source {s.name}"
            )
    return lines


# --------------------------------------------------------------------------------------------
# Build input, store, splits
# --------------------------------------------------------------------------------------------
def build_input(resolved: Resolved, opts: MakeOptions) -> tuple[Path, dict]:
    """The file the builder reads, converting the downloads if the source needs it."""
    from fingerprint_pretrain.builder.datasets.download import file_digests
    from fingerprint_pretrain.builder.datasets.prepare import prepare

    source = resolved.source
    if source.prepare is None:
        if len(resolved.files) != 1:
            raise BuildError(f"{source.name}: expected one input file")
        return resolved.files[0].path, {}
    out = opts.prepared / f"{source.store}.extxyz.gz"
    path, record = prepare(
        source.prepare,
        [f.path for f in resolved.files],
        [f.sha256 for f in resolved.files],
        out,
        progress=opts.progress,
        log=opts.log,
    )
    record = {**record, "sha256": file_digests(path)["sha256"]}
    return path, record


def _descriptor_names(opts: MakeOptions) -> list[str]:
    """Registry names of the label sets every store gets."""
    return resolve_names(opts.descriptors)


def ensure_store(source: Source, input_path: Path, opts: MakeOptions) -> dict:
    """Build, complete or just verify ``<out>/<source.store>.lmdb``.

    Returns:
        ``{"status", "manifest", "build_seconds", "add_seconds"}``; status is ``built``,
        ``completed`` (label sets added) or ``up to date``.
    """
    from fingerprint_pretrain.builder.build import file_sha256
    from fingerprint_pretrain.schemas import read_manifest

    store = opts.out / f"{source.store}.lmdb"
    names = _descriptor_names(opts)
    input_sha = file_sha256(input_path)
    status, build_seconds, add_seconds = "up to date", None, None
    if not _built_from(store, source, input_path, input_sha, opts.overwrite):
        build_seconds = _build(store, source, input_path, names, opts)
        status = "built"
    else:
        add_seconds = _add_missing_sets(store, names, opts)
        if add_seconds is not None:
            status = "completed"
    if opts.verify:
        _check_verifies(store)
    return {
        "status": status,
        "manifest": read_manifest(store),
        "build_seconds": build_seconds,
        "add_seconds": add_seconds,
    }


def _built_from(
    store: Path, source: Source, input_path: Path, input_sha: str, overwrite: bool
) -> bool:
    """Whether ``store`` exists, built from this input (sha256 ``input_sha``) with the source's
    targets; a store built from something else is :class:`BuildError` unless ``overwrite``
    (then False: it is rebuilt)."""
    from fingerprint_pretrain.schemas import read_manifest

    if not store.exists():
        return False
    manifest = read_manifest(store)
    built_from = [s["sha256"] for s in manifest["sources"]]
    targets = [t["name"] for t in manifest["targets"]]
    if built_from == [input_sha] and targets == list(source.targets):
        return True
    if not overwrite:
        raise BuildError(
            f"{store} was built from {[s['path'] for s in manifest['sources']]} "
            f"(sha256 {built_from[0][:12]}…, targets {targets}), not from "
            f"{input_path} (sha256 {input_sha[:12]}…, targets {list(source.targets)}); "
            f"pass --overwrite to rebuild it"
        )
    return False


def _build(
    store: Path, source: Source, input_path: Path, names: list[str], opts: MakeOptions
) -> float:
    """Build (or resume building) ``store`` from ``input_path`` with the label sets ``names``;
    the seconds it took."""
    opts.out.mkdir(parents=True, exist_ok=True)
    if store.with_name(store.name + ".partial").exists():
        opts.log(f"  resuming the interrupted build of {store}")
    start = time.perf_counter()
    build_store(
        BuildOptions(
            inputs=[str(input_path)],
            out=str(store),
            jobs=opts.jobs,
            targets=list(source.targets),
            target_units=dict(source.units),
            id_column=source.id_column,
            fmt=source.fmt,
            descriptors=names,
            descriptor_codec=storage_codecs(names),
            overwrite=store.exists(),
            progress=opts.progress,
        )
    )
    return time.perf_counter() - start


def _add_missing_sets(store: Path, names: list[str], opts: MakeOptions) -> float | None:
    """Add the label sets of ``names`` that ``store`` lacks; the seconds it took, or None when
    it lacks none."""
    from fingerprint_pretrain.builder.add import add_descriptors
    from fingerprint_pretrain.schemas import read_manifest

    missing = [n for n in names if n not in read_manifest(store).get("descriptors", {})]
    if not missing:
        return None
    opts.log(f"  {store.name}: adding label sets {missing}")
    start = time.perf_counter()
    add_descriptors(
        store,
        missing,
        jobs=opts.jobs,
        codec=storage_codecs(missing),
        progress=opts.progress,
    )
    return time.perf_counter() - start


def _check_verifies(store: Path) -> None:
    """:class:`BuildError` unless ``store``'s records hash to its manifest's content hash."""
    from fingerprint_pretrain.builder.info import verify_store

    ok, lines = verify_store(store, progress=False)
    if not ok:
        raise BuildError(
            f"{store} fails verification ({'; '.join(lines)}); delete it or rerun with --overwrite"
        )


def source_ids(input_path: Path, source: Source) -> list[str]:
    """Record ids of the build input, in its order (no structure is parsed)."""
    from fingerprint_pretrain.builder.readers import open_input

    _, _, items, _ = open_input(input_path, source.fmt, [], source.id_column)
    return [item.record_id for item in items]


def align(store_ids: list[str], ids: list[str]) -> np.ndarray:
    """Position in the source of every store record: the store keeps the source's order and
    drops rejected structures, so its ids are a subsequence of the source's.

    Raises:
        BuildError: they are not (the store does not come from this source, or is reordered).
    """
    out = np.empty(len(store_ids), dtype=np.int64)
    pos = 0
    for i, record_id in enumerate(store_ids):
        while pos < len(ids) and ids[pos] != record_id:
            pos += 1
        if pos == len(ids):
            raise BuildError(
                f"store record {i} (id {record_id!r}) is not in the source after position "
                f"{out[i - 1] if i else 0}: store and source are not aligned"
            )
        out[i] = pos
        pos += 1
    return out


def write_splits(
    store: Path, source: Source, input_path: Path, protocols: tuple[str, ...], log=print
) -> Path | None:
    """Write the split files of ``store`` (see the module docstring); a no-op when they exist
    for this store content.

    - ``seed<S>.npz`` (``random``): the paper's random 0.6/0.2/0.2 split of the store's records
      for S in 111, 222, 333, 444, 555 (:func:`schemas.splits.random_split`, as ``fp-train
      --seed S`` computes it);
    - ``matbench_fold<K>.npz`` (``matbench``): MatBench's KFold(5, shuffle, 18012019) over the
      *source's* rows, mapped to store indices (a structure the builder rejected is dropped
      from its fold, so folds still match MatBench's for the others).

    Every file holds int64 index arrays (``train``, ``val``, ``test`` / ``train``, ``test``)
    and ``store_content_hash``; ``np.load(path, allow_pickle=False)`` reads them.
    """
    from fingerprint_pretrain.schemas import open_store

    if not protocols:
        return None
    s = open_store(store)
    folder = store.with_name(store.name.removesuffix(".lmdb") + ".splits")
    info_path = folder / "splits.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("store_content_hash") == s.content_hash and set(protocols) <= set(
            info.get("protocols", [])
        ):
            return folder
    n = len(s)
    content = np.array(s.content_hash)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    info = {
        "store": store.name,
        "store_content_hash": s.content_hash,
        "records": n,
        "protocols": list(protocols),
        "files": {},
    }
    if "random" in protocols:
        for seed in PAPER_SEEDS:
            train, val, test = random_split(n, PAPER_FRACTIONS, seed)
            name = f"seed{seed}.npz"
            np.savez(tmp / name, train=train, val=val, test=test, store_content_hash=content)
            info["files"][name] = {"train": len(train), "val": len(val), "test": len(test)}
        info["random"] = (
            f"fingerprint_pretrain.schemas.splits.random_split(n={n}, "
            f"fractions={list(PAPER_FRACTIONS)}, seed) for "
            f"seeds {list(PAPER_SEEDS)}: the paper's fine-tuning protocol"
        )
    if "matbench" in protocols:
        store_ids = [s.get(i, descriptors=[])["id"] for i in range(n)]
        ids = source_ids(input_path, source)
        rows = align(store_ids, ids)
        row_to_index = np.full(len(ids), -1, dtype=np.int64)
        row_to_index[rows] = np.arange(n)
        for k, (train_rows, test_rows) in enumerate(kfold_splits(len(ids), 5, MATBENCH_SEED)):
            train = row_to_index[train_rows]
            test = row_to_index[test_rows]
            train, test = np.sort(train[train >= 0]), np.sort(test[test >= 0])
            name = f"matbench_fold{k}.npz"
            np.savez(tmp / name, train=train, test=test, store_content_hash=content)
            info["files"][name] = {"train": len(train), "test": len(test)}
        info["matbench"] = (
            f"KFold(n_splits=5, shuffle=True, random_state={MATBENCH_SEED}) over the "
            f"{len(ids)} source rows, mapped to store indices ({len(ids) - n} rejected rows "
            f"dropped); MatBench's own folds only when the source is MatBench's file in its "
            f"order ({source.name})"
        )
    write_json_atomic(tmp / "splits.json", info)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    log(f"  splits: {folder}")
    return folder


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------
def _users(source: Source) -> list[Dataset]:
    """Datasets that resolve to the same store (e.g. the mp20 stand-in)."""
    return [d for d in DATASETS.values() if any(s.store == source.store for s in d.sources)]


def fetch_dataset(
    name: str,
    opts: MakeOptions,
    source_name: str | None = None,
    download_only: bool = False,
    done: dict | None = None,
) -> dict:
    """Get, build, verify and split one dataset. Returns a result row (see
    :func:`make_datasets`). ``done`` maps store names already handled in this run to their
    rows (a store shared by several datasets is built once)."""
    dataset = get(name)
    opts.log(f"{name}:")
    if not download_only:  # a published store instead of a build
        row = fetch_prebuilt(dataset, opts, source_name, done)
        if row is not None:
            return row
    resolved = resolve(dataset, opts, source_name)
    source = resolved.source
    for f in resolved.files:
        opts.log(f"  {f.spec.name}: {f.how} {f.path} ({f.check})")
    row = {
        "dataset": name,
        "source": source.name,
        "subset": source.subset,
        "store": str(opts.out / f"{source.store}.lmdb"),
        "target": dataset.target_of(source),
    }
    if download_only:
        return {**row, "status": "downloaded"}
    if done is not None and source.store in done:
        return {**done[source.store], **row}
    input_path, prepared = build_input(resolved, opts)
    result = ensure_store(source, input_path, opts)
    store = opts.out / f"{source.store}.lmdb"
    splits = write_splits(store, source, input_path, _protocols(source), log=opts.log)
    side = _sidecar(opts.out, source.store)
    previous = json.loads(side.read_text()) if side.is_file() else {}
    if result["status"] != "built" and previous.get("source") == source.name:
        result["build_seconds"] = previous.get("build_seconds")  # the store's own build
    record = _dataset_record(resolved, input_path, prepared, result, splits, previous, opts)
    write_json_atomic(side, record)
    return _finish_row(row, result["status"], record, source, done, opts)


def _protocols(source: Source) -> tuple[str, ...]:
    """Split protocols of ``source``'s store: a shared store (the mp20 stand-in) gets those of
    every task that uses it."""
    return tuple(
        dict.fromkeys(protocol for d in _users(source) if d.role == "task" for protocol in d.splits)
    )


def _dataset_record(
    resolved: Resolved,
    input_path: Path,
    prepared: dict,
    result: dict,
    splits: Path | None,
    previous: dict,
    opts: MakeOptions,
) -> dict:
    """The ``<store>.dataset.json`` of a store :func:`ensure_store` left ``result``
    (``previous``: the file as it was, ``{}`` if absent)."""
    source = resolved.source
    store = opts.out / f"{source.store}.lmdb"
    manifest = result["manifest"]
    return {
        "store": store.name,
        "source": source.name,
        "subset": source.subset,
        "datasets": _datasets_of(source),
        "files": [
            {"name": f.spec.name, "path": str(f.path), "sha256": f.sha256, "check": f.check}
            for f in resolved.files
        ],
        "input": {"path": str(input_path), **({"prepared": prepared} if prepared else {})},
        "content_hash": manifest["content_hash"],
        "records": manifest["counts"]["records"],
        "rejected": manifest["counts"]["rejected"],
        "descriptors": list(manifest.get("descriptors", {})),
        "build_seconds": result["build_seconds"],
        "add_seconds": _sum(previous.get("add_seconds"), result["add_seconds"]),
        "disk_bytes": disk_bytes(store),
        "splits": str(splits) if splits else None,
        "verified": _now() if opts.verify else previous.get("verified"),
    }


def _finish_row(
    row: dict,
    status: str,
    record: dict,
    source: Source,
    done: dict | None,
    opts: MakeOptions,
    what: str | None = None,
) -> dict:
    """A dataset's result row: ``row`` with the status and the numbers of ``source``'s store
    from its ``record``; remembered in ``done`` (by store) and logged (ending with ``what``,
    default the dataset's target)."""
    store = opts.out / f"{source.store}.lmdb"
    row = {
        **row,
        "status": status,
        "records": record["records"],
        "rejected": record["rejected"],
        "build_seconds": record["build_seconds"],
        "disk_bytes": record["disk_bytes"],
        "splits": record["splits"],
    }
    if done is not None:
        done[source.store] = row
    opts.log(
        f"  {row['status']}: {store} ({row['records']:,} records, "
        f"{human_bytes(row['disk_bytes'])}, {what or 'target ' + str(row['target'])})"
    )
    return row


# --------------------------------------------------------------------------------------------
# Registry datasets with a published store (Source.prebuilt)
# --------------------------------------------------------------------------------------------
def fetch_prebuilt(
    dataset: Dataset, opts: MakeOptions, source_name: str | None = None, done: dict | None = None
) -> dict | None:
    """``fp-build fetch NAME`` / ``make datasets`` for a dataset whose source has a published
    store: fetch it (:func:`builder.publish.fetch_store`) into ``<out>/<store>.lmdb``, write its
    splits and its ``<store>.dataset.json``.

    Not used (returns None, the caller builds) when no source has ``prebuilt`` (or not the one
    named), with ``--offline``, when a store not fetched from that URL is already there (a
    local build stays the caller's to keep up to date), or, with ``opts.build_on_fail``, when
    the fetch fails. Matbench folds need the source file's row order: they are written when
    its file can be had (cache, mirror or download), else skipped with a note.

    Returns:
        The dataset's result row (see :func:`make_datasets`) or None.

    Raises:
        DownloadError / StoreError: the published store could not be fetched (without
            ``opts.build_on_fail``).
    """
    source = _published_source(dataset, opts, source_name)
    if source is None:
        return None
    store = opts.out / f"{source.store}.lmdb"
    row = {
        "dataset": dataset.name,
        "source": source.name,
        "subset": source.subset,
        "store": str(store),
        "target": dataset.target_of(source),
    }
    if done is not None and source.store in done:
        return {**done[source.store], **row}
    result = _fetch_published(dataset, source, store, opts)
    if result is None:
        return None
    splits = _prebuilt_splits(dataset, source, store, opts)
    record = _prebuilt_record(source, store, result, splits, opts)
    write_json_atomic(_sidecar(opts.out, source.store), record)
    status = "fetched" if result.fetched else "up to date"
    return _finish_row(
        row, status, record, source, done, opts, f"label sets {record['descriptors']}"
    )


def _published_source(
    dataset: Dataset, opts: MakeOptions, source_name: str | None
) -> Source | None:
    """The source of ``dataset`` to fetch a published store of, or None (see
    :func:`fetch_prebuilt`: none published, offline, or a store there not fetched from it)."""
    sources = [s for s in dataset.sources if s.prebuilt and source_name in (None, s.name)]
    if not sources or opts.offline:
        return None
    source = sources[0]
    store = opts.out / f"{source.store}.lmdb"
    if (store / MANIFEST_NAME).is_file() and fetched_from(store) != base_url(source.prebuilt):
        return None
    return source


def _prebuilt_labels(opts: MakeOptions) -> list[str] | None:
    """Label sets to fetch: ``opts.labels``, else those of ``opts.descriptors`` (None: every
    published set for ``all``; ``[]``: none when no descriptors are asked for)."""
    if opts.labels is not None:
        return opts.labels
    if not opts.descriptors:
        return []
    return None if "all" in opts.descriptors else _descriptor_names(opts)


def _fetch_published(
    dataset: Dataset, source: Source, store: Path, opts: MakeOptions
) -> FetchResult | None:
    """Fetch ``source``'s published store into ``store``; None when it fails and
    ``opts.build_on_fail`` allows a build instead.

    Raises:
        DownloadError / StoreError / BuildError: the fetch failed (without ``build_on_fail``),
            the message naming the dataset and the URL.
    """
    opts.log(f"  published store {source.prebuilt}")
    try:
        return fetch_store(
            source.prebuilt,
            store=store,
            labels=_prebuilt_labels(opts),
            verify=opts.verify,
            overwrite=opts.overwrite,
            progress=opts.progress,
            retries=opts.retries,
            backoff=opts.backoff,
            log=opts.log,
        )
    except (BuildError, StoreError) as err:
        if opts.build_on_fail:
            opts.log(f"  published store not fetched ({err}); building it (--build-on-fail)")
            return None
        raise type(err)(
            f"{dataset.name}: the published store {source.prebuilt} could not be fetched: "
            f"{err} (--build-on-fail builds it from the raw data instead)"
        ) from None


def _prebuilt_splits(
    dataset: Dataset, source: Source, store: Path, opts: MakeOptions
) -> Path | None:
    """The splits of a fetched store; matbench folds only when the source file can be had."""
    protocols = _protocols(source)
    input_path = None
    if "matbench" in protocols:
        try:
            input_path, _ = build_input(resolve(dataset, opts, source.name), opts)
        except (BuildError, StoreError, KeyError) as err:
            opts.log(f"  note: matbench folds not written (they need the source file): {err}")
            protocols = tuple(p for p in protocols if p != "matbench")
    return write_splits(store, source, input_path, protocols, log=opts.log)


def _prebuilt_record(
    source: Source, store: Path, result: FetchResult, splits: Path | None, opts: MakeOptions
) -> dict:
    """The ``<store>.dataset.json`` of a store fetched from ``source.prebuilt``."""
    manifest = read_manifest(store)
    return {
        "store": store.name,
        "source": source.name,
        "subset": source.subset,
        "datasets": _datasets_of(source),
        "prebuilt": {
            "url": result.url,
            "fetched": result.fetched,
            "kept": result.kept,
            "absent": result.absent,
            "seconds": round(result.seconds, 3),
        },
        "files": [],
        "content_hash": manifest["content_hash"],
        "records": manifest["counts"]["records"],
        "rejected": manifest["counts"]["rejected"],
        "descriptors": [n for n in manifest.get("descriptors", {}) if n not in result.absent],
        "build_seconds": None,
        "disk_bytes": disk_bytes(store),
        "splits": str(splits) if splits else None,
        "verified": _now() if opts.verify else None,
    }


def _datasets_of(source: Source) -> dict[str, dict]:
    """``{dataset: {"target", "role"}}`` of the datasets that use ``source``'s store."""
    return {
        d.name: {"target": d.target_of(source), "role": d.role}
        for d in _users(source)
        if source in d.sources
    }


def _now() -> str:
    """The time now, UTC, ISO 8601 to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def make_datasets(opts: MakeOptions, only: list[str] | None = None) -> list[dict]:
    """Every registry dataset that can be had: one verified, split store each (stores shared
    by several datasets built once). Missing datasets get a row saying how to get them.

    Local stand-ins other than the one chosen are built too when their files are at hand
    (e.g. ``mp20_subset`` beside ``mp2018_subset`` for ``mp_e_form``): experiments name the
    stand-in they ran on, and a later, larger stand-in must not make an earlier one vanish."""
    rows, done = [], {}
    fetcher = opts.fetcher()
    for name in only or list(DATASETS):
        chosen = None
        try:
            row = fetch_dataset(name, opts, done=done)
            chosen = row["source"]
            rows.append(row)
        except NotAvailable:
            opts.log("  missing (how to get it: below)")
            rows.append({"dataset": name, "status": "missing", "how": how_to_get(get(name))})
        except (BuildError, InputError, StoreError) as err:
            opts.log(f"  FAILED: {err}")
            rows.append({"dataset": name, "status": "failed", "error": str(err)})
        for source in get(name).sources:
            if source.kind != "local" or source.name == chosen or source.store in done:
                continue
            if _local(source, fetcher) is None:
                continue
            try:
                rows.append(fetch_dataset(name, opts, source.name, done=done))
            except (BuildError, InputError, StoreError) as err:
                opts.log(f"  FAILED: {err}")
                rows.append({"dataset": name, "status": "failed", "error": str(err)})
    return rows


def _sum(a: float | None, b: float | None) -> float | None:
    return None if a is None and b is None else (a or 0.0) + (b or 0.0)


def summary_table(rows: list[dict]) -> str:
    """The closing table of ``make-datasets``."""
    lines = [
        f"{'dataset':<12} {'status':<11} {'source':<9} {'store':<18} {'records':>8} "
        f"{'build s':>8} {'size':>10}  target"
    ]
    for r in rows:
        if r["status"] in ("missing", "failed"):
            lines.append(f"{r['dataset']:<12} {r['status']:<11}")
            continue
        secs = r.get("build_seconds")
        lines.append(
            f"{r['dataset']:<12} {r['status']:<11} {r['source']:<9} "
            f"{Path(r['store']).name:<18} {r.get('records', 0):>8,} "
            f"{(f'{secs:.0f}' if secs is not None else '-'):>8} "
            f"{human_bytes(r.get('disk_bytes')):>10}  {r.get('target') or '-'}"
            + ("  (stand-in subset)" if r.get("subset") else "")
        )
    missing = [r for r in rows if r["status"] == "missing"]
    if missing:
        lines.append("")
        lines.append("missing datasets and how to get them:")
        for r in missing:
            lines.append(f"  {r['dataset']}:")
            lines.extend(f"    {h}" for h in r["how"])
    failed = [r for r in rows if r["status"] == "failed"]
    for r in failed:
        lines.append(f"FAILED {r['dataset']}: {r['error']}")
    return "\n".join(lines)


def status(opts: MakeOptions) -> list[dict]:
    """What is present locally for every registry dataset (files by name only, stores by
    manifest); no checksums, no network."""
    from fingerprint_pretrain.schemas import read_manifest

    fetcher = opts.fetcher()
    rows = []
    for d in DATASETS.values():
        sources = []
        for s in d.sources:
            present = [fetcher.present(f) for f in s.files]
            store = opts.out / f"{s.store}.lmdb"
            entry = {
                "source": s.name,
                "kind": s.kind,
                "subset": s.subset,
                "files": len(s.files),
                "present": sum(p is not None for p in present),
                "store": None,
            }
            if store.is_dir() and (store / "manifest.json").is_file():
                m = read_manifest(store)
                side = _sidecar(opts.out, s.store)
                entry["store"] = {
                    "path": str(store),
                    "records": m["counts"]["records"],
                    "descriptors": len(m.get("descriptors", {})),
                    "source": json.loads(side.read_text()).get("source")
                    if side.is_file()
                    else None,
                }
            sources.append(entry)
        rows.append({"dataset": d, "sources": sources})
    return rows
