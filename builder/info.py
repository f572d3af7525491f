"""``fp-build info`` and ``fp-build verify``."""

from __future__ import annotations

from pathlib import Path

from schemas import open_store, read_manifest
from schemas.store import compute_hashes

__all__ = ["describe", "verify_store"]


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def _disk_bytes(path: Path) -> int:
    """Bytes actually allocated on disk (LMDB files are sparse)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(f.stat().st_blocks * 512 for f in files)


def describe(store: str | Path) -> str:
    """A human summary of a store's manifest and its size on disk."""
    store = Path(store)
    m = read_manifest(store)
    c = m["counts"]
    atoms = max(c["atoms"], 1)
    disk = _disk_bytes(store)
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
            f"source       {src['path']} ({src['format']}, {_human(src['bytes'])}, "
            f"sha256 {src['sha256'][:16]}…)"
        )
    lines.append(f"size on disk {_human(disk)}  ({disk / atoms:,.0f} bytes/atom)")
    if "graph_bytes" in c:
        lines.append(
            f"  graphs     {_human(c['graph_bytes'])}  ({c['graph_bytes'] / atoms:,.0f} bytes/atom)"
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
            f"{_human(d.get('stored_bytes', 0))}  ({d.get('bytes_per_atom', 0):,.0f} bytes/atom"
            f"{lossy})"
        )
    if not m.get("descriptors"):
        lines.append("  labels     none (add with: fp-build add STORE --descriptor NAME)")
    return "\n".join(lines)


def verify_store(store: str | Path, progress: bool = True) -> tuple[bool, list[str]]:
    """Recompute the hashes of every record and compare with the manifest.

    Returns:
        ``(ok, report lines)``.
    """
    s = open_store(store)
    m = s.manifest
    try:
        got = compute_hashes(s, progress=progress)
    except Exception as err:  # damaged bytes surface as LMDB, decode or shape errors
        return False, [f"{store}: CORRUPT — cannot read records: {type(err).__name__}: {err}"]
    lines = []
    ok = True
    if got["graphs_hash"] != m["graphs_hash"]:
        ok = False
        lines.append(f"graphs: MISMATCH (manifest {m['graphs_hash']}, data {got['graphs_hash']})")
    for name, h in got["descriptors"].items():
        if h != m["descriptors"][name]["hash"]:
            ok = False
            lines.append(f"{name}: MISMATCH (manifest {m['descriptors'][name]['hash']}, data {h})")
    if got["content_hash"] != m["content_hash"]:
        ok = False
    lines.append(
        f"{store}: {'OK' if ok else 'CORRUPT'} — {len(s):,} records, content hash "
        f"{got['content_hash']}" + ("" if ok else f" (manifest says {m['content_hash']})")
    )
    return ok, lines
