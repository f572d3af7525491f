"""``fp-build add``: add descriptor label sets to a finished LMDB store, graphs untouched.

A store of parts (:mod:`schemas.lmdb_store`) gets one new part per set, ``labels-<set>.mdb``;
no file of the store is written in place. A set is computed into its own working environment,
``STORE/.labels-<set>.partial/``, with its progress committed with every batch, so an
interrupted ``add`` (``kill -9`` included) resumes where it stopped when run again; then its
part is written under a temporary name, fsynced and renamed into place, and the set becomes
part of the store when the manifest lists it (with the part's size and sha256), in one atomic
rename: until then readers do not see it. Adding a set already present is a no-op unless
``force`` (which first drops the set from the manifest, so old and new labels are never mixed).
A single-file store (schema 1) is read-only: ``add`` refuses it, naming ``fp-build convert``.

Safe alongside other users of the store:

- one writer at a time: ``add`` holds the store's lock (:class:`builder.bookkeeping.StoreLock`)
  for its whole run, so a second ``add`` (or a ``build --overwrite`` of the same store) is
  refused at once, and the manifest's read-modify-write updates never lose a set;
- readers that have the store open keep reading correct records: ``graphs.mdb`` and the other
  parts are only read, and a part replaced by ``--force`` is a new file (a reader keeps the
  one it opened);
- a set that cannot be computed for an element of the store (GMP: no model density for
  Z ≥ 95) is refused before any work, naming the set, the elements and a record;
- a full disk ends the run with one line; rerunning after freeing space resumes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fingerprint_pretrain.builder.bookkeeping import (
    StoreLock,
    add_progress_key,
    descriptor_entry,
    label_digest_prefix,
    pack_stats,
    set_hash,
    stats_key,
    unpack_stats,
)
from fingerprint_pretrain.builder.build import close_quietly, disk_full_guard, unsupported_elements
from fingerprint_pretrain.builder.errors import BuildError
from fingerprint_pretrain.builder.labels import (
    CastError,
    LabelAccumulator,
    LabelConfig,
    compute_labels,
    neighbour_list_from_record,
)
from fingerprint_pretrain.builder.lmdb_writer import LmdbWriter
from fingerprint_pretrain.builder.parallel import available_cores, progress_bar, run_parallel
from fingerprint_pretrain.builder.parts import clean_leftovers, label_prefix, write_part
from fingerprint_pretrain.builder.structure import element_label
from fingerprint_pretrain.schemas.backends import open_store
from fingerprint_pretrain.schemas.lmdb_store import LmdbStore, close_env, descriptor_key
from fingerprint_pretrain.schemas.manifest import (
    GRAPHS_PART,
    MANIFEST_NAME,
    combine_content_hash,
    part_file,
    read_manifest,
    schema_major,
    write_json_atomic,
)

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
    graphs: LmdbStore, start: int, stop: int, size: int
) -> Iterator[tuple[int, list[dict]]]:
    for first in range(start, stop, size):
        last = min(first + size, stop)
        yield first, [graphs.get(i, descriptors=[]) for i in range(first, last)]


def working_dir(store: Path, name: str) -> Path:
    """Where ``add`` computes set ``name`` before its part is written (hidden)."""
    return store / f".labels-{name}.partial"


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
    from fingerprint_pretrain.builder.descriptors.registry import resolve

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
        if schema_major(manifest["schema_version"], store) == 1:
            raise BuildError(
                f"{store} is a single-file store (schema {manifest['schema_version']}), "
                f"read-only; convert it to parts first with `fp-build convert {store}`"
            )
        present = manifest.get("descriptors", {})
        here = [name for name in present if (store / part_file(name)).exists()]
        todo = [s.name for s in specs if force or s.name not in here]  # absent sets: again
        skipped = [s.name for s in specs if s.name not in todo]
        _clean_finished(store, [name for name in here if name not in todo])
        if progress and skipped:
            print(f"already present (use --force to recompute): {', '.join(skipped)}")
        if not todo:
            return manifest
        graphs = open_store(store, descriptors=[])
        _check_elements(graphs, store, todo, int(manifest["counts"]["records"]))
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
            done = _add_part(graphs, store, manifest, name, labels, force, run)
            if done is None:
                break  # stopped early on purpose (tests)
            entry, part = done
            current = read_manifest(store)
            descriptors = {**current.get("descriptors", {}), name: entry}
            manifest = _with_descriptors(current, descriptors, {name: part})
            write_json_atomic(store / MANIFEST_NAME, manifest)
            close_env(os.path.realpath(store / part["file"]))  # a handle on a replaced file
            shutil.rmtree(working_dir(store, name))
    return manifest


def _clean_finished(store: Path, listed: list[str]) -> None:
    """Remove what a killed ``add`` left behind: part files being written, and the working
    environments of sets the manifest already lists (killed after its update)."""
    clean_leftovers(store)
    for name in listed:
        shutil.rmtree(working_dir(store, name), ignore_errors=True)


def _add_part(
    graphs: LmdbStore,
    store: Path,
    manifest: dict,
    name: str,
    labels: LabelConfig,
    force: bool,
    run: _Run,
) -> tuple[dict, dict] | None:
    """Compute (or finish computing) one set in its working environment, then write its part.
    Returns its manifest entry and part entry, or None when stopped early on purpose."""
    writer = LmdbWriter(working_dir(store, name))
    try:
        entry = _add_set(writer, graphs, manifest, name, labels, force, run)
        part = None
        if entry is not None:
            with writer.env.begin(buffers=False) as txn:
                part = write_part(txn, [label_prefix(name)], store / part_file(name))
    except BaseException:
        close_quietly(writer)
        raise
    writer.close()
    return None if entry is None else (entry, part)


def _add_set(
    writer: LmdbWriter,
    graphs: LmdbStore,
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
    if not _add_one(writer, graphs, name, labels, state, n, float(manifest["cutoff"]), run):
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


def store_elements(graphs: LmdbStore, n: int) -> dict[int, tuple[int, int]]:
    """Atomic number -> (records holding it, first such record) over the whole store, by
    reading every graph record."""
    out: dict[int, tuple[int, int]] = {}
    for i in range(n):
        for z in np.unique(graphs.get(i, descriptors=[])["z"]).tolist():
            count, first = out.get(z, (0, i))
            out[z] = (count + 1, first)
    return out


def _check_elements(graphs: LmdbStore, store: Path, names: list[str], n: int) -> None:
    """Refuse, before any work, sets that cannot be computed for an element of the store."""
    if not any(_has_element_limits(name) for name in names):
        return
    elements = store_elements(graphs, n)
    missing = unsupported_elements(names, np.array(sorted(elements), dtype=np.int64))
    if not missing:
        return
    name, numbers = next(iter(missing.items()))
    records = sum(elements[z][0] for z in numbers)
    first = min(elements[z][1] for z in numbers)
    record_id = graphs.get(first, descriptors=[])["id"]
    also = f" (also {', '.join(list(missing)[1:])})" if len(missing) > 1 else ""
    raise BuildError(
        f"{store}: cannot add {name}{also}: no GMP density for element "
        f"{', '.join(element_label(z) for z in numbers)}, present in {records} record(s) "
        f"(e.g. record {first}, id {record_id}); rebuild the store without them, or add "
        f"other sets"
    )


def _has_element_limits(name: str) -> bool:
    from fingerprint_pretrain.builder.descriptors.registry import get

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
    graphs: LmdbStore,
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
        for first, records in _record_chunks(graphs, state["done"], n, run.chunk_size):
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


def _with_descriptors(manifest: dict, descriptors: dict, new_parts: dict | None = None) -> dict:
    """The manifest with a new descriptor table, the parts that go with it (the kept sets'
    and ``new_parts``) and its content hash."""
    parts = {**manifest.get("parts", {}), **(new_parts or {})}
    return {
        **manifest,
        "descriptors": descriptors,
        "parts": {k: v for k, v in parts.items() if k == GRAPHS_PART or k in descriptors},
        "content_hash": combine_content_hash(
            manifest["graphs_hash"], {k: v["hash"] for k, v in descriptors.items()}
        ),
    }
