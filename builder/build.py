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
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import itertools
import json
import os
import shutil
import struct
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

import builder
from builder.bookkeeping import (
    CONFIG_KEY,
    PROGRESS_KEY,
    RECORD_INFO_PREFIX,
    REJECTED_PREFIX,
    descriptor_entry,
    label_digest_prefix,
    pack_stats,
    set_hash,
    stats_key,
    unpack_stats,
    values_under,
)
from builder.graph import graph_record
from builder.labels import CastError, LabelAccumulator, LabelConfig, compute_labels
from builder.lmdb_writer import LmdbWriter
from builder.provenance import environment
from builder.readers import RawItem, open_input
from builder.stats import FeatureStats
from builder.structure import Rejected, to_arrays
from schemas.lmdb_store import SIZES_KEY, close_env, descriptor_key, graph_key
from schemas.manifest import (
    FORMAT_NAME,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    combine_content_hash,
    write_json_atomic,
)
from schemas.record import GRAPH_FIELDS, encode_record, record_digest

__all__ = ["BuildError", "BuildOptions", "build_store", "NEIGHBOUR_POLICY"]

NEIGHBOUR_POLICY = {
    "kind": "complete radius graph",
    "images": "all periodic images",
    "self_pair": "zero-shift self pair excluded; an atom's own periodic images are neighbours",
    "order": "per centre, nearest first (ties: neighbour index, then shift)",
    "engine": "pymatgen find_points_in_spheres",
}


class BuildError(RuntimeError):
    """A build that cannot proceed; the message says why and what to do."""


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
def process_chunk(
    items: list[RawItem], cutoff: float, allow_missing: bool, labels: LabelConfig
) -> tuple[list[tuple], dict[str, FeatureStats], dict[str, CastError]]:
    """Parse, check and encode a chunk of items (runs in a worker process).

    Returns:
        ``(results, stats, cast_errors)``: per item either ``("ok", graph_bytes, digest,
        n_atoms, n_edges, {set: (blob, digest)})`` or ``("rejected", item (payload dropped),
        reason)``; the chunk's per-set feature statistics and cast errors.
    """
    results: list[tuple] = []
    acc = LabelAccumulator(labels)
    for item in items:
        try:
            structure = to_arrays(item.kind, item.payload)
            record, nl = graph_record(
                item.record_id, structure, item.targets, cutoff, allow_missing
            )
            values = compute_labels(
                labels.names, record["z"], record["pos"], record["cell"], record["pbc"], nl
            )
        except Rejected as why:
            results.append(("rejected", replace(item, payload=None), str(why)))
            continue
        except Exception as err:  # a bug or an input no check foresaw: keep the build going
            reason = f"internal error: {type(err).__name__}: {err}"
            results.append(("rejected", replace(item, payload=None), reason))
            continue
        graph_bytes = encode_record(record["id"], {k: record[k] for k in GRAPH_FIELDS})
        results.append(
            (
                "ok",
                graph_bytes,
                record_digest(record),
                len(record["z"]),
                len(record["edge_dist"]),
                acc.add(record["id"], values),
            )
        )
    return (results, *acc.finish())


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


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def progress_bar(total: int | None, initial: int, desc: str, enabled: bool, unit: str = "struct"):
    """A tqdm bar with rate and ETA, or None when progress output is off."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, smoothing=0.05, dynamic_ncols=True
    )


def _chunks(items: Iterator[RawItem], size: int) -> Iterator[list[RawItem]]:
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


def run_parallel(
    function, tasks: Iterable[tuple], jobs: int, backend: str, scheduler: str | None
) -> Iterator:
    """Run ``function(*task)`` for each task; results in task order, a bounded number in
    flight (memory stays flat however many tasks there are)."""
    if jobs == 1:
        for task in tasks:
            yield function(*task)
        return
    from joblib import Parallel, delayed, parallel_config

    client = None
    if backend == "dask":
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise BuildError(
                "--backend dask needs dask.distributed: pip install 'dask[distributed]'"
            ) from None
        if scheduler:
            client = Client(scheduler)
        else:
            client = Client(LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True))
    try:
        # Stopping early (an error, --strict) cancels queued tasks; joblib warns about that.
        warnings.filterwarnings("ignore", message=".*tasks which were still being processed")
        with parallel_config(backend=backend, n_jobs=jobs):
            runner = Parallel(return_as="generator", pre_dispatch="2*n_jobs", batch_size=1)
            yield from runner(delayed(function)(*task) for task in tasks)
    finally:
        if client is not None:
            cluster = client.cluster
            client.close()
            if cluster is not None and not scheduler:
                cluster.close()


def _open_inputs(opts: BuildOptions):
    opened = []
    target_names: list[str] | None = None
    for path in opts.inputs:
        fmt, names, items, total = open_input(
            path, opts.fmt, opts.targets, opts.id_column, opts.cif_column
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
        "builder_version": builder.__version__,
        "sources": [{k: s[k] for k in ("sha256", "format")} for s in sources],
        "cutoff": opts.cutoff,
        "targets": target_names,
        "id_column": opts.id_column,
        "cif_column": opts.cif_column,
        "allow_missing_targets": opts.allow_missing_targets,
        "descriptors": list(opts.descriptors),
        "descriptor_dtype": opts.descriptor_dtype,
        "descriptor_codec": dict(sorted(opts.descriptor_codec.items())),
    }


def build_store(opts: BuildOptions) -> dict:
    """Build (or resume building) the store ``opts.out``. Returns the manifest.

    Raises:
        BuildError / InputError: with a one-line message for the command line.
    """
    final = Path(opts.out)
    partial = final.with_name(final.name + ".partial")
    if final.exists() and not opts.overwrite:
        raise BuildError(f"{final} already exists; pass --overwrite to rebuild it")
    if opts.cutoff <= 0:
        raise BuildError(f"--cutoff must be > 0 (got {opts.cutoff})")
    if opts.descriptors:
        from builder.descriptors.registry import resolve

        opts.descriptors = [s.name for s in resolve(opts.descriptors)]
    jobs = available_cores() if opts.jobs in (-1, 0) else opts.jobs
    opened, target_names = _open_inputs(opts)
    sources = [
        {"path": str(p), "sha256": file_sha256(p), "bytes": _size(p), "format": fmt}
        for p, fmt, _, _ in opened
    ]
    fingerprint = _fingerprint(opts, sources, target_names)

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
            progress = _write_records(opts, writer, opened, progress, jobs)
            if progress is None:  # stopped early on purpose (tests)
                return {}
        manifest = _finalise(opts, writer, partial, sources, target_names, progress)
    finally:
        writer.close()
    if final.exists():  # --overwrite: swap in the new store, then drop the old one
        # A read handle this process holds on the old store would keep serving old pages.
        close_env(os.path.realpath(final))
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        partial.rename(final)
        shutil.rmtree(old)
    else:
        partial.rename(final)
    return manifest


def _size(path: str) -> int:
    p = Path(path)
    return (
        sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        if p.is_dir()
        else (p.stat().st_size)
    )


def _write_records(
    opts: BuildOptions, writer: LmdbWriter, opened, progress: dict, jobs: int
) -> dict | None:
    labels = opts.label_config()
    stats: dict[str, FeatureStats] = {}
    for name in labels.names:
        previous = unpack_stats(writer.get(stats_key(name)))
        if previous is not None:
            stats[name] = previous
    errors = {name: CastError(**e) for name, e in progress.setdefault("cast_error", {}).items()}
    total = sum(t for *_, t in opened) if all(t is not None for *_, t in opened) else None
    items = itertools.chain.from_iterable(items for _, _, items, _ in opened)
    items = itertools.islice(items, progress["inputs_done"], None)
    tasks = (
        (chunk, opts.cutoff, opts.allow_missing_targets, labels)
        for chunk in _chunks(items, opts.chunk_size)
    )
    bar = progress_bar(
        total, progress["inputs_done"], f"build {Path(opts.out).name}", opts.progress
    )
    commits = 0
    stored = progress.setdefault("stored_bytes", {})
    try:
        for results, chunk_stats, chunk_errors in run_parallel(
            process_chunk, tasks, jobs, opts.backend, opts.scheduler
        ):
            kv: list[tuple[bytes, bytes]] = []
            for res in results:
                if res[0] == "rejected":
                    _, item, reason = res
                    if opts.strict:
                        raise BuildError(f"{item.where}: {reason}")
                    entry = json.dumps(
                        [item.source, item.row_kind, item.row, item.record_id, reason]
                    ).encode()
                    kv.append((REJECTED_PREFIX + b"%010d" % progress["rejected"], entry))
                    progress["rejected"] += 1
                    continue
                _, graph_bytes, digest, n_atoms, n_edges, blobs = res
                index = progress["records"]
                kv.append((graph_key(index), graph_bytes))
                stored["graphs"] = stored.get("graphs", 0) + len(graph_bytes)
                kv.append(
                    (
                        RECORD_INFO_PREFIX + b"%010d" % index,
                        digest + struct.pack("<II", n_atoms, n_edges),
                    )
                )
                for name, (blob, label_digest) in blobs.items():
                    kv.append((descriptor_key(name, index), blob))
                    stored[name] = stored.get(name, 0) + len(blob)
                    kv.append((label_digest_prefix(name) + b"%010d" % index, label_digest))
                progress["records"] += 1
            for name, s in chunk_stats.items():
                stats[name] = stats[name].merge(s) if name in stats else s
                kv.append((stats_key(name), pack_stats(stats[name])))
            for name, e in chunk_errors.items():
                errors[name] = errors.get(name, CastError()).merge(e)
                try:
                    errors[name].check(name, labels.dtype)
                except ValueError as err:
                    raise BuildError(
                        f"{err} (delete {writer.path} and rebuild with --dtype float32, or add "
                        f"the set later with fp-build add --dtype float32)"
                    ) from None
            progress["cast_error"] = {name: e.to_dict() for name, e in errors.items()}
            progress["inputs_done"] += len(results)
            kv.append((PROGRESS_KEY, json.dumps(progress).encode()))
            writer.write(kv)
            if bar is not None:
                bar.update(len(results))
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
    manifest = {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "backend": "lmdb",
        "builder_version": builder.__version__,
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
