"""``fp-build build``: structure files -> a finished, verified LMDB store.

Pipeline: readers stream :class:`~builder.readers.RawItem` chunks (main process) -> joblib
workers parse, check, build neighbour lists, compute labels and encode records -> the main
process writes each chunk in one LMDB transaction with the build's progress.

Atomic and resumable:

- everything is written under ``STORE.partial/`` and renamed to ``STORE`` only when complete
  (manifest written last), so a ``STORE`` directory is always a finished store;
- each transaction records how many input items it covers; a build killed at any moment (``kill
  -9`` included) and restarted with the same command skips those items and continues. Records
  are numbered in input order and encoded deterministically, so the resumed store has the same
  content hash as an uninterrupted build. A restart with different inputs or options is refused
  (the partial directory names what differs);
- ``--jobs``, ``--backend`` and chunking do not change the content, so a resume may use others.

Safe to misuse:

- one writer at a time: the run holds a lock on ``STORE.partial/`` (and on ``STORE`` when
  replacing it with ``--overwrite``); a second ``fp-build build`` or ``add`` on the same store is
  refused at once, naming the holder's PID (:class:`builder.bookkeeping.StoreLock`);
- worker processes watch the main process and exit when it dies (``kill -9`` included);
- a full disk ends the run with one line (the partial store stays resumable), and a build that
  keeps no structure at all is an error that says why.
"""

from __future__ import annotations

import csv
import datetime as dt
import errno
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import struct
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import fingerprint_pretrain.builder
import lmdb
import numpy as np
from fingerprint_pretrain.builder.bookkeeping import (
    CONFIG_KEY,
    PROGRESS_KEY,
    RECORD_INFO_PREFIX,
    REJECTED_PREFIX,
    StoreLock,
    descriptor_entry,
    label_digest_prefix,
    pack_stats,
    set_hash,
    stats_key,
    unpack_stats,
    values_under,
)
from fingerprint_pretrain.builder.errors import BuildError
from fingerprint_pretrain.builder.graph import encode_graph_record, graph_record, graph_records
from fingerprint_pretrain.builder.labels import (
    CastError,
    LabelAccumulator,
    LabelConfig,
    compute_labels,
)
from fingerprint_pretrain.builder.lmdb_writer import LmdbWriter
from fingerprint_pretrain.builder.parallel import (
    available_cores,
    chunks,
    progress_bar,
    run_parallel,
)
from fingerprint_pretrain.builder.parts import remove_working_env, split_working_env
from fingerprint_pretrain.builder.provenance import environment
from fingerprint_pretrain.builder.readers import RawItem, open_input
from fingerprint_pretrain.builder.stats import FeatureStats
from fingerprint_pretrain.builder.structure import Rejected, check_targets, element_label, to_arrays
from fingerprint_pretrain.schemas.lmdb_store import (
    LEGACY_FILE,
    SIZES_KEY,
    close_env,
    descriptor_key,
    graph_key,
)
from fingerprint_pretrain.schemas.manifest import (
    FORMAT_NAME,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    combine_content_hash,
    read_manifest,
    write_json_atomic,
)
from fingerprint_pretrain.schemas.record import encode_record

__all__ = ["BuildError", "BuildOptions", "build_store", "NEIGHBOUR_POLICY"]

NEIGHBOUR_POLICY = {
    "kind": "complete radius graph",
    "images": "all periodic images",
    "self_pair": "zero-shift self pair excluded; an atom's own periodic images are neighbours",
    "order": "per centre, nearest first (ties: neighbour index, then shift)",
    "engine": "pymatgen find_points_in_spheres",
}


@dataclass
class BuildOptions:
    """Everything that decides a build (see ``fp-build build --help`` for the meanings)."""

    inputs: list[str]
    out: str
    cutoff: float = 8.0
    jobs: int = -1
    targets: list[str] = field(default_factory=list)
    target_units: dict[str, str] = field(default_factory=dict)
    id_column: str | None = None
    cif_column: str = "cif"
    targets_csv: str | None = None  # targets of `files` inputs (folders of CIF/POSCAR), by id
    fmt: str | None = None
    strict: bool = False
    allow_missing_targets: bool = False
    descriptors: list[str] = field(default_factory=list)
    descriptor_dtype: str = "float32"
    descriptor_codec: dict[str, str] = field(default_factory=dict)
    backend: str = "loky"
    scheduler: str | None = None
    chunk_size: int = 32
    overwrite: bool = False
    map_size: int = 1 << 28
    progress: bool = True
    stop_after_chunks: int | None = None  # testing aid: stop (as if killed) after N commits

    def label_config(self) -> LabelConfig:
        return LabelConfig(
            tuple(self.descriptors),
            self.descriptor_dtype,
            tuple(sorted(self.descriptor_codec.items())),
        )


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------
def unsupported_elements(names: Sequence[str], z: np.ndarray) -> dict[str, list[int]]:
    """Label sets of ``names`` that cannot be computed for atomic numbers ``z``: set name ->
    the atomic numbers it lacks (only GMP sets have such limits: no model density for Z ≥ 95)."""
    if not names:
        return {}
    from fingerprint_pretrain.builder.descriptors.registry import get

    out = {}
    for name in names:
        spec = get(name)
        check = getattr(spec.module, "unsupported_elements", None)
        missing = check(z, **spec.params) if check is not None else []
        if missing:
            out[name] = missing
    return out


def _check_label_elements(names: Sequence[str], z: np.ndarray) -> None:
    missing = unsupported_elements(names, z)
    if missing:
        name, numbers = next(iter(missing.items()))
        raise Rejected(
            f"no GMP density for element {', '.join(element_label(n) for n in numbers)} "
            f"(label set {name})"
        )


@dataclass(frozen=True)
class EncodedRecord:
    """One structure that became a record, encoded in a worker, ready to write.

    Attributes:
        graph_bytes: the encoded graph record (``schemas.record.encode_record``).
        digest: ``fingerprint_pretrain.schemas.record.record_digest`` of the graph record.
        n_atoms: atoms N of the structure.
        n_edges: directed edges E of its neighbour list.
        labels: label set name -> (encoded label record, its digest).
        elements: the record's distinct atomic numbers, ascending.
    """

    graph_bytes: bytes
    digest: bytes
    n_atoms: int
    n_edges: int
    labels: dict[str, tuple[bytes, bytes]]
    elements: list[int]


@dataclass(frozen=True)
class RejectedItem:
    """An input item that did not become a record.

    Attributes:
        item: the item, payload dropped (``None``) so the result stays small.
        reason: one line saying why.
    """

    item: RawItem
    reason: str


class ChunkResult(NamedTuple):
    """What :func:`process_chunk` returns for one chunk of items.

    Attributes:
        results: per item, in input order, an :class:`EncodedRecord` or a :class:`RejectedItem`.
        stats: label set name -> statistics of the chunk's stored values.
        cast_errors: label set name -> error of casting the chunk's values to the storage dtype.
    """

    results: list[EncodedRecord | RejectedItem]
    stats: dict[str, FeatureStats]
    cast_errors: dict[str, CastError]


def process_chunk(
    items: list[RawItem],
    cutoff: float,
    allow_missing: bool,
    labels: LabelConfig,
    target_names: Sequence[str] = (),
) -> ChunkResult:
    """Parse, check and encode a chunk of items (runs in a worker process).

    Items are parsed one by one, then the neighbour lists and graph checks of the whole chunk
    are done at once (:func:`builder.graph.graph_records`), then labels and encoding per
    record; each item gets the same result (record bytes or rejection reason) as alone.
    """
    outcome: list = [None] * len(items)  # per item: Rejected reason (str) or (record, nl)
    parsed = []  # (position, structure)
    for k, item in enumerate(items):
        try:
            check_targets(item.targets, target_names)
            parsed.append((k, to_arrays(item.kind, item.payload)))
        except Exception as err:
            outcome[k] = _reason(err)
    graphs = _graphs(items, parsed, cutoff, allow_missing, bool(labels.names))
    for (k, _), result in zip(parsed, graphs):
        outcome[k] = result if isinstance(result, (tuple, str)) else _reason(result)
    results: list[EncodedRecord | RejectedItem] = []
    acc = LabelAccumulator(labels)
    for item, result in zip(items, outcome):
        if isinstance(result, tuple):
            record, nl = result
            try:
                _check_label_elements(labels.names, record["z"])
                values = compute_labels(
                    labels.names, record["z"], record["pos"], record["cell"], record["pbc"], nl
                )
            except Exception as err:
                result = _reason(err)
        if isinstance(result, str):
            results.append(RejectedItem(replace(item, payload=None), result))
            continue
        graph_bytes, digest = encode_graph_record(record)
        results.append(
            EncodedRecord(
                graph_bytes=graph_bytes,
                digest=digest,
                n_atoms=len(record["z"]),
                n_edges=len(record["edge_dist"]),
                labels=acc.add(record["id"], values),
                elements=sorted(set(record["z"].tolist())),
            )
        )
    return ChunkResult(results, *acc.finish())


def _reason(err: Exception) -> str:
    """The rejection reason of an item whose processing raised ``err``."""
    if isinstance(err, Rejected):
        return str(err)
    # a bug or an input no check foresaw: keep the build going
    return f"internal error: {type(err).__name__}: {err}"


def _graphs(
    items: list[RawItem], parsed: list, cutoff: float, allow_missing: bool, lists: bool = True
) -> list:
    """The graph records of the parsed items, all at once (with their neighbour lists when
    ``lists``: labels need them); should the batch fail on something unforeseen, one at a
    time, so the error is pinned on its item."""
    entries = [(items[k].record_id, s, items[k].targets) for k, s in parsed]
    try:
        return graph_records(entries, cutoff, allow_missing, lists)
    except Exception:
        out = []
        for entry in entries:
            try:
                out.append(graph_record(*entry, cutoff, allow_missing))
            except Exception as err:
                out.append(err)
        return out


# --------------------------------------------------------------------------------------------
# Main side
# --------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (sorted relative names and contents)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _open_inputs(opts: BuildOptions):
    opened = []
    target_names: list[str] | None = None
    for path in opts.inputs:
        fmt, names, items, total = open_input(
            path, opts.fmt, opts.targets, opts.id_column, opts.cif_column, opts.targets_csv
        )
        if target_names is not None and names != target_names:
            raise BuildError(
                f"{path}: targets {names} differ from {target_names} of {opts.inputs[0]}; "
                f"choose them with --target"
            )
        target_names = names
        opened.append((path, fmt, items, total))
    return opened, target_names or []


def _fingerprint(opts: BuildOptions, sources: list[dict], target_names: list[str]) -> dict:
    """What decides the content; a resume must match it exactly."""
    return {
        "schema_version": SCHEMA_VERSION,
        "builder_version": fingerprint_pretrain.builder.__version__,
        "sources": [{k: s[k] for k in ("sha256", "format")} for s in sources],
        "cutoff": opts.cutoff,
        "targets": target_names,
        "id_column": opts.id_column,
        "cif_column": opts.cif_column,
        **(
            {"targets_csv": file_sha256(opts.targets_csv)} if opts.targets_csv else {}
        ),  # absent when unused, so older partial builds still resume
        "allow_missing_targets": opts.allow_missing_targets,
        "descriptors": list(opts.descriptors),
        "descriptor_dtype": opts.descriptor_dtype,
        "descriptor_codec": dict(sorted(opts.descriptor_codec.items())),
    }


def build_store(opts: BuildOptions) -> dict:
    """Build (or resume building) the store ``opts.out``. Returns the manifest.

    Raises:
        BuildError / InputError: with a one-line message for the command line (including a
            full disk, and a build in which every structure was rejected).
        StoreBusyError: another fp-build is writing this store.
    """
    final = Path(opts.out)
    partial = final.with_name(final.name + ".partial")
    if final.exists() and not opts.overwrite:
        raise BuildError(f"{final} already exists; pass --overwrite to rebuild it")
    if not (math.isfinite(opts.cutoff) and opts.cutoff > 0):
        raise BuildError(f"--cutoff must be a finite number > 0 (got {opts.cutoff})")
    if opts.chunk_size < 1:
        raise BuildError(f"--chunk-size must be ≥ 1 (got {opts.chunk_size})")
    if opts.descriptors:
        from fingerprint_pretrain.builder.descriptors.registry import resolve

        opts.descriptors = [s.name for s in resolve(opts.descriptors)]
    created = not partial.exists()
    partial.mkdir(parents=True, exist_ok=True)
    lock = StoreLock(partial, final, "build")
    try:
        lock.acquire()
        with ExitStack() as old_lock:
            if final.exists():  # checked again under the lock: another build may just have ended
                if not opts.overwrite:
                    raise BuildError(f"{final} already exists; pass --overwrite to rebuild it")
                # an `add` on the store being replaced must not be running either
                old = old_lock.enter_context(StoreLock(final, final, "build --overwrite"))
            else:
                old = None
            with disk_full_guard(final, partial):
                manifest = _build_locked(opts, partial)
            if manifest is None:  # stopped early on purpose (tests)
                return {}
            _put_in_place(final, partial, old)
            lock.moved_to(final)
    finally:
        lock.release()
        if created and partial.is_dir() and not any(partial.iterdir()):
            partial.rmdir()  # nothing was written (e.g. an input that does not exist)
    return manifest


def _build_locked(opts: BuildOptions, partial: Path) -> dict | None:
    """The build proper, run under the partial store's lock. Returns the manifest, or None
    when stopped early on purpose (``stop_after_chunks``)."""
    jobs = available_cores() if opts.jobs in (-1, 0) else opts.jobs
    opened, target_names = _open_inputs(opts)
    sources = [
        {"path": str(p), "sha256": file_sha256(p), "bytes": _size(p), "format": fmt}
        for p, fmt, _, _ in opened
    ]
    fingerprint = _fingerprint(opts, sources, target_names)
    if (partial / MANIFEST_NAME).is_file() and not (partial / LEGACY_FILE).exists():
        return read_manifest(partial)  # finished, killed just before it was put in place

    writer = LmdbWriter(partial, map_size=opts.map_size)
    try:
        stored = writer.read_json(CONFIG_KEY)
        if stored is None:
            writer.write([(CONFIG_KEY, json.dumps(fingerprint).encode())])
        elif stored != fingerprint:
            diff = sorted(k for k in fingerprint if stored.get(k) != fingerprint[k])
            raise BuildError(
                f"{partial} holds an interrupted build of different inputs/options "
                f"(differs in: {', '.join(diff)}); rerun that command to finish it, or "
                f"delete {partial} to start over"
            )
        progress = writer.read_json(PROGRESS_KEY) or {
            "inputs_done": 0,
            "records": 0,
            "rejected": 0,
            "complete": False,
            "stored_bytes": {},
        }
        if not progress["complete"]:
            progress = _write_records(opts, writer, opened, progress, jobs, target_names)
            if progress is None:
                writer.close()
                return None
        if progress["records"] == 0:
            _write_rejected_csv(writer, partial)
            raise BuildError(_nothing_kept(opts, writer, partial, progress))
        manifest = _finalise(opts, writer, partial, sources, target_names, progress)
    except BaseException:
        close_quietly(writer)
        raise
    writer.close()
    return manifest


def _put_in_place(final: Path, partial: Path, old_lock: StoreLock | None) -> None:
    """Remove the working environment from the finished ``partial`` (its parts hold the
    store), then rename it to ``final`` (``--overwrite``: swap, drop the old)."""
    remove_working_env(partial)
    if not final.exists():
        partial.rename(final)
        return
    # A read handle this process holds on the old store would keep serving old pages.
    close_env(os.path.realpath(final))
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    final.rename(old)
    if old_lock is not None:
        old_lock.moved_to(old)
    partial.rename(final)
    shutil.rmtree(old)


def _nothing_kept(opts: BuildOptions, writer: LmdbWriter, partial: Path, progress: dict) -> str:
    """Why a build that kept no structure fails (one line)."""
    if progress["inputs_done"] == 0:
        return f"{', '.join(opts.inputs)}: no structures in the input; nothing to store"
    first = writer.prefixed(REJECTED_PREFIX)[:1]
    example = ""
    if first:
        source, row_kind, row, record_id, reason = json.loads(first[0][1])
        example = f" (first: {source}, {row_kind} {row} (id {record_id}): {reason})"
    return (
        f"no structure kept: all {progress['inputs_done']} inputs were rejected{example}; "
        f"every reason is in {partial / 'rejected.csv'}"
    )


LOW_SPACE = 256 << 20  # bytes; an I/O error with less free space than this is a full disk


def is_disk_full(err: BaseException, where: str | os.PathLike | None = None) -> bool:
    """Whether ``err`` means the file system (or the LMDB map) ran out of space.

    LMDB reports a write cut short by a full disk as EIO ("Input/output error", measured on a
    full tmpfs), so an I/O error counts as a full disk when the file system holding ``where``
    has less than :data:`LOW_SPACE` free.
    """
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(err, (lmdb.MapFullError, lmdb.DiskError)):
        return True
    if isinstance(err, lmdb.Error) and "No space left on device" in str(err):
        return True
    io_error = (isinstance(err, OSError) and err.errno == errno.EIO) or (
        isinstance(err, lmdb.Error) and "Input/output error" in str(err)
    )
    if not io_error or where is None:
        return False
    try:
        fs = os.statvfs(where)
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize < LOW_SPACE


@contextmanager
def disk_full_guard(store: str | os.PathLike, partial: str | os.PathLike | None = None):
    """Turn a full disk (ENOSPC, EDQUOT, LMDB map/disk full) into one :class:`BuildError`
    line; what was committed before stays, so rerunning the command resumes."""
    try:
        yield
    except Exception as err:
        if not is_disk_full(err, partial if partial is not None else store):
            raise
        kept = f" (partial store {partial} kept)" if partial is not None else ""
        raise BuildError(
            f"disk full while writing {store}{kept}; free space and rerun the same command "
            f"to resume"
        ) from None


def close_quietly(writer: LmdbWriter) -> None:
    """Close ``writer`` on an error path: a second error (e.g. the sync after a failed commit
    on a full disk) must not hide the first."""
    try:
        writer.close()
    except Exception:
        try:
            writer.env.close()
        except Exception:
            pass


def _size(path: str) -> int:
    p = Path(path)
    return (
        sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        if p.is_dir()
        else (p.stat().st_size)
    )


def _write_records(
    opts: BuildOptions,
    writer: LmdbWriter,
    opened,
    progress: dict,
    jobs: int,
    target_names: Sequence[str] = (),
) -> dict | None:
    """Write the records of every input item not yet covered by ``progress``, one LMDB
    transaction per chunk (records, rejections, label statistics and the progress together).

    Returns:
        the final progress (``complete``: true), or ``None`` when stopped after
        ``opts.stop_after_chunks`` commits.
    """
    labels = opts.label_config()
    stats = _stored_stats(writer, labels.names)
    errors = {name: CastError(**e) for name, e in progress.setdefault("cast_error", {}).items()}
    total, tasks = _chunk_tasks(opts, opened, progress["inputs_done"], labels, target_names)
    bar = progress_bar(
        total, progress["inputs_done"], f"build {Path(opts.out).name}", opts.progress
    )
    commits = 0
    progress.setdefault("stored_bytes", {})
    # Z -> [records holding it, first such record]: lets `add` refuse a set that cannot be
    # computed for some element before doing any work
    # (only kept when tracked from the first record on: partial stores of older versions lack it)
    if progress.get("elements") is None and progress["records"] == 0:
        progress["elements"] = {}
    try:
        for chunk in run_parallel(process_chunk, tasks, jobs, opts.backend, opts.scheduler):
            kv: list[tuple[bytes, bytes]] = []
            for result in chunk.results:
                if isinstance(result, RejectedItem):
                    kv.append(_rejected_entry(result, progress, opts.strict))
                else:
                    kv.extend(_record_entries(result, progress))
            kv.extend(_merge_labels(chunk, stats, errors, labels.dtype, writer.path))
            progress["cast_error"] = {name: e.to_dict() for name, e in errors.items()}
            progress["inputs_done"] += len(chunk.results)
            kv.append((PROGRESS_KEY, json.dumps(progress).encode()))
            writer.write(kv)
            if bar is not None:
                bar.update(len(chunk.results))
                bar.set_postfix(rejected=progress["rejected"], refresh=False)
            commits += 1
            if opts.stop_after_chunks is not None and commits >= opts.stop_after_chunks:
                return None
    finally:
        if bar is not None:
            bar.close()
    progress["complete"] = True
    writer.write([(PROGRESS_KEY, json.dumps(progress).encode())])
    return progress


def _stored_stats(writer: LmdbWriter, names: Sequence[str]) -> dict[str, FeatureStats]:
    """Label statistics an interrupted build already committed, per set that has them."""
    stats: dict[str, FeatureStats] = {}
    for name in names:
        previous = unpack_stats(writer.get(stats_key(name)))
        if previous is not None:
            stats[name] = previous
    return stats


def _chunk_tasks(
    opts: BuildOptions,
    opened,
    inputs_done: int,
    labels: LabelConfig,
    target_names: Sequence[str],
):
    """``(total, tasks)``: the number of input items (``None`` if a reader cannot tell) and the
    :func:`process_chunk` argument tuples for the items after the first ``inputs_done``."""
    total = sum(t for *_, t in opened) if all(t is not None for *_, t in opened) else None
    items = itertools.chain.from_iterable(items for _, _, items, _ in opened)
    items = itertools.islice(items, inputs_done, None)
    tasks = (
        (chunk, opts.cutoff, opts.allow_missing_targets, labels, tuple(target_names))
        for chunk in chunks(items, opts.chunk_size)
    )
    return total, tasks


def _rejected_entry(rejected: RejectedItem, progress: dict, strict: bool) -> tuple[bytes, bytes]:
    """The ``rejected.csv`` row of an item, as a key-value pair (counted in ``progress``);
    :class:`BuildError` instead under ``--strict``."""
    item = rejected.item
    if strict:
        raise BuildError(f"{item.where}: {rejected.reason}")
    entry = json.dumps([item.source, item.row_kind, item.row, item.record_id, rejected.reason])
    key = REJECTED_PREFIX + b"%010d" % progress["rejected"]
    progress["rejected"] += 1
    return key, entry.encode()


def _record_entries(record: EncodedRecord, progress: dict) -> list[tuple[bytes, bytes]]:
    """Key-value pairs of the next record (graph, digest and sizes, label sets); counts it in
    ``progress`` (records, stored bytes per part, elements)."""
    index = progress["records"]
    stored = progress["stored_bytes"]
    elements = progress.get("elements")
    for z in record.elements if elements is not None else ():
        elements.setdefault(str(z), [0, index])[0] += 1
    sizes = struct.pack("<II", record.n_atoms, record.n_edges)
    kv = [
        (graph_key(index), record.graph_bytes),
        (RECORD_INFO_PREFIX + b"%010d" % index, record.digest + sizes),
    ]
    stored["graphs"] = stored.get("graphs", 0) + len(record.graph_bytes)
    for name, (blob, label_digest) in record.labels.items():
        kv.append((descriptor_key(name, index), blob))
        stored[name] = stored.get(name, 0) + len(blob)
        kv.append((label_digest_prefix(name) + b"%010d" % index, label_digest))
    progress["records"] += 1
    return kv


def _merge_labels(
    chunk: ChunkResult,
    stats: dict[str, FeatureStats],
    errors: dict[str, CastError],
    dtype: str,
    store: Path,
) -> list[tuple[bytes, bytes]]:
    """Merge a chunk's label statistics and cast errors into the build's (in place); the
    statistics' key-value pairs. :class:`BuildError` when a set's values no longer fit
    ``dtype``."""
    kv = []
    for name, s in chunk.stats.items():
        stats[name] = stats[name].merge(s) if name in stats else s
        kv.append((stats_key(name), pack_stats(stats[name])))
    for name, e in chunk.cast_errors.items():
        errors[name] = errors.get(name, CastError()).merge(e)
        try:
            errors[name].check(name, dtype)
        except ValueError as err:
            raise BuildError(
                f"{err} (delete {store} and rebuild with --dtype float32, or add "
                f"the set later with fp-build add --dtype float32)"
            ) from None
    return kv


def _finalise(
    opts: BuildOptions,
    writer: LmdbWriter,
    partial: Path,
    sources: list[dict],
    target_names: list[str],
    progress: dict,
) -> dict:
    n = progress["records"]
    infos = values_under(writer, RECORD_INFO_PREFIX, n)
    graphs = hashlib.sha256(b"".join(v[:32] for v in infos))
    sizes = np.array([struct.unpack("<II", v[32:40]) for v in infos], dtype=np.int32).reshape(-1, 2)
    writer.write(
        [(SIZES_KEY, encode_record("sizes", {"n_atoms": sizes[:, 0], "n_edges": sizes[:, 1]}))]
    )
    graphs_hash = "sha256:" + graphs.hexdigest()
    descriptors = {}
    labels = opts.label_config()
    n_atoms = int(sizes[:, 0].sum())
    for name in labels.names:
        descriptors[name] = descriptor_entry(
            name,
            labels,
            unpack_stats(writer.get(stats_key(name))),
            CastError(**progress.get("cast_error", {}).get(name, {})),
            set_hash(writer, name, n),
            progress["stored_bytes"].get(name, 0),
            n_atoms,
        )
    _write_rejected_csv(writer, partial)
    with writer.env.begin(buffers=False) as txn:
        parts = split_working_env(txn, partial, labels.names)
    manifest = {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "backend": "lmdb",
        "builder_version": fingerprint_pretrain.builder.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cutoff": opts.cutoff,
        "neighbour_policy": {**NEIGHBOUR_POLICY, "cutoff": opts.cutoff},
        "sources": sources,
        "counts": {
            "records": n,
            "atoms": n_atoms,
            "edges": int(sizes[:, 1].astype(np.int64).sum()),
            "rejected": progress["rejected"],
            "inputs": progress["inputs_done"],
            "graph_bytes": progress["stored_bytes"].get("graphs", 0),
        },
        "targets": [{"name": t, "unit": opts.target_units.get(t, "")} for t in target_names],
        "descriptors": descriptors,
        "graphs_hash": graphs_hash,
        "content_hash": combine_content_hash(
            graphs_hash, {k: v["hash"] for k, v in descriptors.items()}
        ),
        "build": {
            "options": {
                k: v
                for k, v in asdict(opts).items()
                if k not in ("progress", "stop_after_chunks", "overwrite", "map_size")
            },
            "environment": environment(),
        },
        "parts": parts,
    }
    write_json_atomic(partial / MANIFEST_NAME, manifest)
    return manifest


def _write_rejected_csv(writer: LmdbWriter, partial: Path) -> None:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["source", "row_kind", "row", "id", "reason"])
    for _, value in writer.prefixed(REJECTED_PREFIX):
        out.writerow(json.loads(value))
    tmp = partial / "rejected.csv.tmp"
    tmp.write_text(buf.getvalue())
    os.replace(tmp, partial / "rejected.csv")


def summarize(manifest: dict) -> str:
    """A few human lines about a finished build."""
    c = manifest["counts"]
    lines = [
        f"records {c['records']:,}  atoms {c['atoms']:,}  edges {c['edges']:,}  "
        f"rejected {c['rejected']:,} of {c['inputs']:,} inputs",
        f"targets {[t['name'] for t in manifest['targets']]}  cutoff {manifest['cutoff']} Å  "
        f"descriptors {list(manifest['descriptors']) or 'none'}",
        f"content hash {manifest['content_hash']}",
    ]
    return "\n".join(lines)
