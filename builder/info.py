"""``fp-build info`` and ``fp-build verify``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fingerprint_pretrain.builder.sizes import disk_bytes, human_bytes
from fingerprint_pretrain.builder.stats import FeatureStats
from fingerprint_pretrain.schemas import (
    MANIFEST_NAME,
    RecordError,
    StoreError,
    open_store,
    read_manifest,
)
from fingerprint_pretrain.schemas.manifest import schema_major
from fingerprint_pretrain.schemas.record import validate_graph_record
from fingerprint_pretrain.schemas.store import Store, compute_hashes

__all__ = ["describe", "verify_store"]


def describe(store: str | Path) -> str:
    """A human summary of a store's manifest and its size on disk."""
    store = Path(store)
    m = read_manifest(store)
    c = m["counts"]
    atoms = max(c["atoms"], 1)
    disk = disk_bytes(store)
    lines = [
        f"store        {store}  ({m['backend']}, schema {m['schema_version']}, "
        f"builder {m['builder_version']}, created {m['created']})",
        f"content hash {m['content_hash']}",
        f"records      {c['records']:,}  atoms {c['atoms']:,}  edges {c['edges']:,} "
        f"({c['edges'] / atoms:.1f} per atom)  rejected {c['rejected']:,} of "
        f"{c['inputs']:,} inputs",
        f"graph        cutoff {m['cutoff']} Å, {m['neighbour_policy']['kind']}, "
        f"{m['neighbour_policy']['images']}",
        "targets      "
        + (", ".join(f"{t['name']} [{t['unit'] or '-'}]" for t in m["targets"]) or "none"),
    ]
    for src in m["sources"]:
        lines.append(
            f"source       {src['path']} ({src['format']}, {human_bytes(src['bytes'])}, "
            f"sha256 {src['sha256'][:16]}…)"
        )
    lines.append(f"size on disk {human_bytes(disk)}  ({disk / atoms:,.0f} bytes/atom)")
    if "graph_bytes" in c:
        lines.append(
            f"  graphs     {human_bytes(c['graph_bytes'])}  "
            f"({c['graph_bytes'] / atoms:,.0f} bytes/atom)"
        )
    for name, d in m.get("descriptors", {}).items():
        err = d.get("cast_error", {})
        lossy = (
            f", {d['dtype']} cast max rel err {err.get('max_rel', 0):.1e}"
            if d["dtype"] != "float64"
            else ""
        )
        lines.append(
            f"  {name:<10} {d['family']:<6} dim {d['dim']:>5}  {d['dtype']}/{d['codec']}  "
            f"{human_bytes(d.get('stored_bytes', 0))}  "
            f"({d.get('bytes_per_atom', 0):,.0f} bytes/atom{lossy})"
        )
    if not m.get("descriptors"):
        lines.append("  labels     none (add with: fp-build add STORE --descriptor NAME)")
    lines += _layout_lines(store, m)
    return "\n".join(lines)


def _part_state(store: Path, entry: dict) -> tuple[str, int | None]:
    """(``"present"`` | ``"absent"`` | ``"wrong size"``, bytes on disk or None) of a part."""
    try:
        size = (store / entry["file"]).stat().st_size
    except FileNotFoundError:
        return "absent", None
    return ("present" if size == entry["bytes"] else "wrong size"), size


def _layout_lines(store: Path, m: dict) -> list[str]:
    """The store's files: its parts, each with its size and whether it is here."""
    if m.get("backend") != "lmdb":
        return []
    if schema_major(m["schema_version"], store) == 1:
        return [
            "layout       single file data.mdb (schema 1, read-only; `fp-build convert "
            f"{store}` makes it a store of parts)"
        ]
    lines = ["parts"]
    for entry in m["parts"].values():
        state, size = _part_state(store, entry)
        note = f" ({size:,} bytes here: damaged or cut short)" if state == "wrong size" else ""
        lines.append(
            f"  {entry['file']:<26} {human_bytes(entry['bytes']):>10}  "
            f"sha256 {entry['sha256'][:16]}…  {state}{note}"
        )
    return lines


class _Checks:
    """What ``verify`` checks record by record besides the hashes: the record contract, the
    manifest's dims and dtypes, the size table, the totals and the label statistics."""

    def __init__(self, store: Store):
        self.store = store
        m = store.manifest
        self.n_targets = len(m.get("targets", []))
        self.sets = {name: m["descriptors"][name] for name in store.descriptor_names}
        for name, entry in self.sets.items():
            if type(entry.get("dim")) is not int or not isinstance(entry.get("dtype"), str):
                raise StoreError(f"{store.path}: manifest entry of {name} lacks its dim or dtype")
        self.stats = {name: FeatureStats.empty(int(d["dim"])) for name, d in self.sets.items()}
        self.atoms = 0
        self.edges = 0
        sizes = (store.num_atoms(), store.num_edges())
        self.sizes = sizes if len(sizes[0]) == len(store) else None

    def __call__(self, i: int, rec: dict) -> None:
        where = f"record {i} ({rec.get('id')!r})"
        try:
            validate_graph_record(rec, self.n_targets)
        except RecordError as err:
            raise RecordError(f"{where}: {err}") from None
        n, e = len(rec["z"]), len(rec["edge_dist"])
        self.atoms += n
        self.edges += e
        if self.sizes is not None and (self.sizes[0][i], self.sizes[1][i]) != (n, e):
            raise RecordError(
                f"{where}: has {n} atoms and {e} edges, the size table says "
                f"{self.sizes[0][i]} and {self.sizes[1][i]}"
            )
        for name, entry in self.sets.items():
            arr = rec[name]
            if arr.shape != (n, int(entry["dim"])) or arr.dtype.name != entry["dtype"]:
                raise RecordError(
                    f"{where}: {name} is {arr.dtype.name} {arr.shape}, the manifest says "
                    f"{entry['dtype']} ({n}, {entry['dim']})"
                )
            self.stats[name] = self.stats[name].merge(FeatureStats.of(arr))

    def manifest_problems(self) -> list[str]:
        """Differences between the manifest's counts and statistics and the records'."""
        m = self.store.manifest
        problems = []
        c = m["counts"]
        for key, got in (("atoms", self.atoms), ("edges", self.edges)):
            if c.get(key) != got:
                problems.append(f"manifest: counts.{key} is {c.get(key)}, the records hold {got}")
        for name, entry in self.sets.items():
            got, want = self.stats[name].to_dict(), entry.get("stats")
            want = want if isinstance(want, dict) else {}
            if want.get("count") != got["count"]:
                problems.append(
                    f"{name}: manifest stats.count is {want.get('count')}, records hold "
                    f"{got['count']} atoms"
                )
                continue
            scale = max(np.abs(np.asarray(got["min"] + got["max"], dtype=float)).max(initial=0), 1)
            for key in ("mean", "std", "min", "max"):
                value = want.get(key)
                ok = (
                    isinstance(value, list)
                    and np.shape(value) == np.shape(got[key])
                    and all(type(v) in (int, float) for v in value)
                ) and np.allclose(
                    np.asarray(value, dtype=float),
                    got[key],
                    rtol=1e-6,
                    atol=1e-9 * scale,
                    equal_nan=True,
                )
                if not ok:
                    problems.append(
                        f"{name}: manifest stats.{key} differs from the records' statistics"
                    )
        return problems


def verify_store(store: str | Path, progress: bool = True) -> tuple[bool, list[str]]:
    """Check a store completely: open it (manifest digest, LMDB file structure or Zarr
    metadata), read every record (checksums), check each against the record contract and the
    manifest (dims, dtypes, size table), recompute counts, label statistics and hashes, and
    compare them with the manifest.

    Returns:
        ``(ok, report lines)``; the last line is the verdict.

    Raises:
        StoreError: ``store`` is not a store at all (no such directory, no manifest).

    A store of parts also has each present part's size and sha256 compared with the manifest
    (a mismatch is reported and fails the store); parts absent here are named, not failed.
    """
    if not (Path(store) / MANIFEST_NAME).is_file():
        read_manifest(store)  # not a store at all: its StoreError says so (no report)
    lines: list[str] = []
    parts_ok = True
    try:
        parts_ok, lines, readable = _verify_parts(Path(store), read_manifest(store))
        s = open_store(store, descriptors=readable)
        checks = _Checks(s)
    except (StoreError, RecordError) as err:
        return False, lines + [f"{store}: CORRUPT — {err}"]
    m = s.manifest
    if "manifest_digest" not in m:
        lines.append(
            f"{store}: note: the manifest predates manifest digests; an edit to it cannot be "
            f"told from the records (rebuild the store to add one)"
        )
    try:
        got = compute_hashes(s, progress=progress, check=checks)
    except (StoreError, RecordError) as err:
        return False, lines + [f"{store}: CORRUPT — {err}"]
    lines += _checksum_notes(s, store)
    problems = checks.manifest_problems()
    lines += problems
    ok = parts_ok and not problems
    if got["graphs_hash"] != m["graphs_hash"]:
        ok = False
        lines.append(f"graphs: MISMATCH (manifest {m['graphs_hash']}, data {got['graphs_hash']})")
    for name, h in got["descriptors"].items():
        if h != m["descriptors"][name]["hash"]:
            ok = False
            lines.append(f"{name}: MISMATCH (manifest {m['descriptors'][name]['hash']}, data {h})")
    if got["content_hash"] != m["content_hash"]:
        ok = False
    absent = s.absent_descriptors
    checked = 0 if readable is None else len(readable) + 1
    lines.append(
        f"{store}: {'OK' if ok else 'CORRUPT'} — {len(s):,} records, content hash "
        f"{got['content_hash']}"
        + ("" if ok else f" (manifest says {m['content_hash']})")
        + (f"; {checked} parts match their size and sha256" if checked else "")
        + (f"; not checked, absent here: {', '.join(absent)}" if absent else "")
    )
    return ok, lines


def _verify_parts(store: Path, m: dict) -> tuple[bool, list[str], list[str] | None]:
    """Check every present part's size and sha256 against the manifest (a store of parts).

    Returns:
        ``(ok, report lines, the label sets whose records to read)``: a part with the wrong
        size or checksum is reported and its records are not read (None: every set, for a
        store without parts).
    """
    parts = m.get("parts")
    if m.get("backend") != "lmdb" or not isinstance(parts, dict):
        return True, [], None
    from fingerprint_pretrain.builder.parts import file_sha256

    ok, lines, readable = True, [], []
    for name, entry in parts.items():
        state, size = _part_state(store, entry)
        if state == "absent":
            lines.append(f"{entry['file']}: absent here (not checked)")
            continue
        if state == "wrong size":
            ok = False
            lines.append(
                f"{entry['file']}: MISMATCH — {size:,} bytes, the manifest lists "
                f"{entry['bytes']:,} (damaged or cut short)"
            )
            continue
        digest = file_sha256(store / entry["file"])
        if digest != entry["sha256"]:
            ok = False
            lines.append(
                f"{entry['file']}: sha256 MISMATCH (manifest {entry['sha256']}, file {digest})"
            )
        if name != "graphs":
            readable.append(name)
    return ok, lines, readable


def _checksum_notes(s: Store, store: str | Path) -> list[str]:
    """A note when some records (LMDB) or arrays (Zarr) carry no checksum."""
    unchecked_records = getattr(s, "unchecked", 0)
    if unchecked_records:
        return [
            f"{store}: note: {unchecked_records:,} record blobs predate record checksums "
            f"(readers cannot detect damage in them; this verify did, by hash)"
        ]
    unchecked_arrays = getattr(s, "unchecked_arrays", [])
    if unchecked_arrays:
        return [
            f"{store}: note: arrays {', '.join(unchecked_arrays)} predate chunk checksums "
            f"(readers cannot detect damage in them; this verify did, by hash)"
        ]
    return []
