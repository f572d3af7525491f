"""``fp-build add``: add descriptor label sets to a finished LMDB store, graphs untouched.

New sets are written under their own keys (``d/<set>/<index>``); the graphs are only read. A
set becomes part of the store when the manifest lists it, which happens in one atomic rename
after the last record is written: until then readers do not see it. Progress is committed
with every batch, so an interrupted ``add`` (``kill -9`` included) resumes where it stopped
when run again. Adding a set already present is a no-op unless ``force`` (which first drops the
set from the manifest, so old and new labels are never mixed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.bookkeeping import (
    add_progress_key,
    descriptor_entry,
    label_digest_prefix,
    pack_stats,
    set_hash,
    stats_key,
    unpack_stats,
)
from builder.build import BuildError, available_cores, progress_bar, run_parallel
from builder.labels import (
    CastError,
    LabelAccumulator,
    LabelConfig,
    compute_labels,
    neighbour_list_from_record,
)
from builder.lmdb_writer import LmdbWriter
from schemas.lmdb_store import close_env, descriptor_key, graph_key
from schemas.manifest import MANIFEST_NAME, combine_content_hash, read_manifest, write_json_atomic
from schemas.record import decode_record

__all__ = ["add_descriptors"]


def label_chunk(
    records: list[dict], cutoff: float, labels: LabelConfig
) -> tuple[list[dict[str, tuple[bytes, bytes]]], dict, dict]:
    """Compute and encode the configured sets for a chunk of graph records (worker side)."""
    acc = LabelAccumulator(labels)
    out = []
    for rec in records:
        nl = neighbour_list_from_record(rec, cutoff)
        values = compute_labels(labels.names, rec["z"], rec["pos"], rec["cell"], rec["pbc"], nl)
        out.append(acc.add(rec["id"], values))
    return (out, *acc.finish())


def _record_chunks(
    writer: LmdbWriter, start: int, stop: int, size: int
) -> Iterator[tuple[int, list[dict]]]:
    for first in range(start, stop, size):
        last = min(first + size, stop)
        yield first, [decode_record(writer.get(graph_key(i))) for i in range(first, last)]


def add_descriptors(
    store: str | Path,
    names: Sequence[str],
    *,
    jobs: int = -1,
    backend: str = "loky",
    scheduler: str | None = None,
    force: bool = False,
    dtype: str = "float32",
    codec: dict[str, str] | None = None,
    chunk_size: int = 16,
    progress: bool = True,
    stop_after_chunks: int | None = None,
) -> dict:
    """Add label sets to ``store``. Returns the updated manifest.

    Raises:
        BuildError: a Zarr store (add to the LMDB store, then re-export), unknown set name.
    """
    from builder.descriptors.registry import resolve

    store = Path(store)
    manifest = read_manifest(store)
    if manifest.get("backend") != "lmdb":
        raise BuildError(
            f"{store}: sets are added to LMDB stores; add them there and re-export to Zarr"
        )
    specs = resolve(names)
    present = manifest.get("descriptors", {})
    todo = [s.name for s in specs if force or s.name not in present]
    skipped = [s.name for s in specs if s.name not in todo]
    if progress and skipped:
        print(f"already present (use --force to recompute): {', '.join(skipped)}")
    if not todo:
        return manifest
    jobs = available_cores() if jobs in (-1, 0) else jobs
    n = int(manifest["counts"]["records"])
    n_atoms = int(manifest["counts"]["atoms"])
    cutoff = float(manifest["cutoff"])

    if force and any(name in present for name in todo):
        manifest = _with_descriptors(manifest, {k: v for k, v in present.items() if k not in todo})
        write_json_atomic(store / MANIFEST_NAME, manifest)

    close_env(str(Path(store).resolve()))  # this process's read handle must not outlive writes
    writer = LmdbWriter(store)
    run = _Run(jobs, backend, scheduler, chunk_size, progress, stop_after_chunks)
    try:
        for name in todo:
            labels = LabelConfig((name,), dtype, tuple(sorted((codec or {}).items())))
            config = {"dtype": dtype, "codec": labels.codec_of(name)}
            state = writer.read_json(add_progress_key(name))
            if state is None or state["config"] != config or (force and state["done"] == n):
                state = {"config": config, "done": 0, "stored_bytes": 0, "cast_error": {}}
                writer.write(
                    [(add_progress_key(name), json.dumps(state).encode()), (stats_key(name), None)]
                )
            if not _add_one(writer, name, labels, state, n, cutoff, run):
                return manifest  # stopped early on purpose (tests)
            entry = descriptor_entry(
                name,
                labels,
                unpack_stats(writer.get(stats_key(name))),
                CastError(**state["cast_error"]),
                set_hash(writer, name, n),
                state["stored_bytes"],
                n_atoms,
            )
            current = read_manifest(store)
            manifest = _with_descriptors(current, {**current.get("descriptors", {}), name: entry})
            write_json_atomic(store / MANIFEST_NAME, manifest)
    finally:
        writer.close()
    return manifest


@dataclass(frozen=True)
class _Run:
    """How to run one ``add``: workers, backend and progress output."""

    jobs: int
    backend: str
    scheduler: str | None
    chunk_size: int
    progress: bool
    stop_after_chunks: int | None


def _add_one(
    writer: LmdbWriter,
    name: str,
    labels: LabelConfig,
    state: dict,
    n: int,
    cutoff: float,
    run: _Run,
) -> bool:
    """Compute one set for records ``state["done"]`` … n − 1, committing as it goes.
    Returns False when stopped early on purpose (``stop_after_chunks``)."""
    stats = unpack_stats(writer.get(stats_key(name)))
    error = CastError(**state["cast_error"])
    starts = []

    def tasks():
        for first, records in _record_chunks(writer, state["done"], n, run.chunk_size):
            starts.append(first)
            yield records, cutoff, labels

    bar = progress_bar(n, state["done"], f"add {name}", run.progress)
    commits = 0
    try:
        for blobs, chunk_stats, chunk_errors in run_parallel(
            label_chunk, tasks(), run.jobs, run.backend, run.scheduler
        ):
            first = starts.pop(0)
            kv = []
            for k, per_set in enumerate(blobs):
                blob, digest = per_set[name]
                kv.append((descriptor_key(name, first + k), blob))
                kv.append((label_digest_prefix(name) + b"%010d" % (first + k), digest))
                state["stored_bytes"] += len(blob)
            if name in chunk_stats:
                stats = chunk_stats[name] if stats is None else stats.merge(chunk_stats[name])
                kv.append((stats_key(name), pack_stats(stats)))
            error = error.merge(chunk_errors.get(name, CastError()))
            try:
                error.check(name, labels.dtype)
            except ValueError as err:
                raise BuildError(f"{err} (rerun with --dtype float32)") from None
            state["cast_error"] = error.to_dict()
            state["done"] = first + len(blobs)
            kv.append((add_progress_key(name), json.dumps(state).encode()))
            writer.write(kv)
            if bar is not None:
                bar.update(len(blobs))
            commits += 1
            if run.stop_after_chunks is not None and commits >= run.stop_after_chunks:
                return False
    finally:
        if bar is not None:
            bar.close()
    return True


def _with_descriptors(manifest: dict, descriptors: dict) -> dict:
    """The manifest with a new descriptor table and the content hash that goes with it."""
    return {
        **manifest,
        "descriptors": descriptors,
        "content_hash": combine_content_hash(
            manifest["graphs_hash"], {k: v["hash"] for k, v in descriptors.items()}
        ),
    }
