"""``fp-build add``: add descriptor label sets to a finished LMDB store, graphs untouched.

New sets are written under their own keys (``d/<set>/<index>``); the graphs are only read. A
set becomes part of the store when the manifest lists it, which happens in one atomic rename
after the last record is written: until then readers do not see it. Progress is committed
with every batch, so an interrupted ``add`` (``kill -9`` included) resumes where it stopped
when run again. Adding a set already present is a no-op unless ``force`` (which first drops the
set from the manifest, so old and new labels are never mixed).

Safe alongside other users of the store:

- one writer at a time: ``add`` holds the store's lock (:class:`builder.bookkeeping.StoreLock`)
  for its whole run, so a second ``add`` (or a ``build --overwrite`` of the same store) is
  refused at once, and the manifest's read-modify-write updates never lose a set;
- readers that have the store open keep reading correct records: LMDB reuses the pages that a
  commit frees only when no registered reader still sees them, and readers open stores without
  registering (``lock=False``), so ``add`` itself keeps the snapshot it started from registered
  for the whole run; no page any reader may be using is overwritten while it runs;
- a set that cannot be computed for an element of the store (GMP: no model density for
  Z ≥ 95) is refused before any work, naming the set, the elements and a record;
- a full disk ends the run with one line; rerunning after freeing space resumes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from builder.bookkeeping import (
    PROGRESS_KEY,
    StoreLock,
    add_progress_key,
    descriptor_entry,
    label_digest_prefix,
    pack_stats,
    set_hash,
    stats_key,
    unpack_stats,
)
from builder.build import close_quietly, disk_full_guard, unsupported_elements
from builder.errors import BuildError
from builder.labels import (
    CastError,
    LabelAccumulator,
    LabelConfig,
    compute_labels,
    neighbour_list_from_record,
)
from builder.lmdb_writer import LmdbWriter
from builder.parallel import available_cores, progress_bar, run_parallel
from builder.structure import element_label
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
    read_manifest(store)  # a finished store at all? (before creating a lock file in it)
    if chunk_size < 1:
        raise BuildError(f"chunk size must be ≥ 1 (got {chunk_size})")
    specs = resolve(names)
    with StoreLock(store, store, "add"), disk_full_guard(store):
        manifest = read_manifest(store)  # under the lock: what a previous add left
        if manifest.get("backend") != "lmdb":
            raise BuildError(
                f"{store}: sets are added to LMDB stores; add them there and re-export to Zarr"
            )
        present = manifest.get("descriptors", {})
        todo = [s.name for s in specs if force or s.name not in present]
        skipped = [s.name for s in specs if s.name not in todo]
        if progress and skipped:
            print(f"already present (use --force to recompute): {', '.join(skipped)}")
        if not todo:
            return manifest
        close_env(str(store.resolve()))  # this process's read handle must not outlive writes
        writer = LmdbWriter(store)
        try:
            # Registered for the whole run, this snapshot stops LMDB from reusing any page
            # that readers (lock=False, so invisible to LMDB) may still be reading.
            pin = writer.env.begin()
            _check_elements(writer, store, todo, int(manifest["counts"]["records"]))
            if force and any(name in present for name in todo):
                kept = {k: v for k, v in present.items() if k not in todo}
                manifest = _with_descriptors(manifest, kept)
                write_json_atomic(store / MANIFEST_NAME, manifest)
            run = _Run(
                available_cores() if jobs in (-1, 0) else jobs,
                backend,
                scheduler,
                chunk_size,
                progress,
                stop_after_chunks,
            )
            for name in todo:
                labels = LabelConfig((name,), dtype, tuple(sorted((codec or {}).items())))
                entry = _add_set(writer, store, manifest, name, labels, force, run)
                if entry is None:
                    break  # stopped early on purpose (tests)
                current = read_manifest(store)
                descriptors = {**current.get("descriptors", {}), name: entry}
                manifest = _with_descriptors(current, descriptors)
                write_json_atomic(store / MANIFEST_NAME, manifest)
            pin.abort()
        except BaseException:
            close_quietly(writer)
            raise
        writer.close()
    return manifest


def _add_set(
    writer: LmdbWriter,
    store: Path,
    manifest: dict,
    name: str,
    labels: LabelConfig,
    force: bool,
    run: _Run,
) -> dict | None:
    """Compute (or finish computing) one set. Returns its manifest entry, or None when
    stopped early on purpose."""
    n = int(manifest["counts"]["records"])
    config = {"dtype": labels.dtype, "codec": labels.codec_of(name)}
    state = writer.read_json(add_progress_key(name))
    if state is None or state["config"] != config or (force and state["done"] == n):
        state = {"config": config, "done": 0, "stored_bytes": 0, "cast_error": {}}
        writer.write(
            [(add_progress_key(name), json.dumps(state).encode()), (stats_key(name), None)]
        )
    if not _add_one(writer, name, labels, state, n, float(manifest["cutoff"]), run):
        return None
    return descriptor_entry(
        name,
        labels,
        unpack_stats(writer.get(stats_key(name))),
        CastError(**state["cast_error"]),
        set_hash(writer, name, n),
        state["stored_bytes"],
        int(manifest["counts"]["atoms"]),
    )


def store_elements(writer: LmdbWriter, n: int) -> dict[int, tuple[int, int]]:
    """Atomic number -> (records holding it, first such record) over the whole store: from the
    build's bookkeeping when it has them, else by reading every graph record."""
    progress = writer.read_json(PROGRESS_KEY) or {}
    known = progress.get("elements")
    if known is not None and progress.get("records") == n:
        return {int(z): (int(c), int(f)) for z, (c, f) in known.items()}
    out: dict[int, tuple[int, int]] = {}
    for i in range(n):
        for z in np.unique(decode_record(writer.get(graph_key(i)))["z"]).tolist():
            count, first = out.get(z, (0, i))
            out[z] = (count + 1, first)
    return out


def _check_elements(writer: LmdbWriter, store: Path, names: list[str], n: int) -> None:
    """Refuse, before any work, sets that cannot be computed for an element of the store."""
    if not any(_has_element_limits(name) for name in names):
        return
    elements = store_elements(writer, n)
    missing = unsupported_elements(names, np.array(sorted(elements), dtype=np.int64))
    if not missing:
        return
    name, numbers = next(iter(missing.items()))
    records = sum(elements[z][0] for z in numbers)
    first = min(elements[z][1] for z in numbers)
    record_id = decode_record(writer.get(graph_key(first)))["id"]
    also = f" (also {', '.join(list(missing)[1:])})" if len(missing) > 1 else ""
    raise BuildError(
        f"{store}: cannot add {name}{also}: no GMP density for element "
        f"{', '.join(element_label(z) for z in numbers)}, present in {records} record(s) "
        f"(e.g. record {first}, id {record_id}); rebuild the store without them, or add "
        f"other sets"
    )


def _has_element_limits(name: str) -> bool:
    from builder.descriptors.registry import get

    return hasattr(get(name).module, "unsupported_elements")


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
