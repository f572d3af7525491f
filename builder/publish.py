"""Publishing a store of parts (``fp-build pack``) and fetching one (``fp-build fetch URL``).

A store of parts (schema 2: layout in :mod:`schemas.lmdb_store`'s docstring and README "Stores")
is a flat directory:
``manifest.json``, ``graphs.mdb`` and one ``labels-<set>.mdb`` per label set, each listed in
``manifest["parts"]`` with its size and sha256. That is all a data repository (Zenodo, a web
server, an object store) has to serve:

- :func:`pack_store` checks every part of a local store against the manifest (size and sha256)
  and writes ``DIR/manifest.json`` (the store's own bytes), the part files (hard links where the
  file system allows, else copies; each written to a temporary name and renamed, so never
  half-written), ``DIR/SHA256SUMS`` (``sha256sum -c`` reads it) and ``DIR/README.txt``.
- :func:`fetch_store` downloads ``manifest.json`` from a URL (``http://``, ``https://``,
  ``file://``) or a local directory (size-capped, parsed and validated: schema version, digest,
  well-formed part entries), then only the parts asked for (graphs plus the chosen label sets)
  through :class:`builder.datasets.download.Fetcher` (HTTP ``Range`` resume, retries, ``.part``
  files, sha256 verified before a file is moved into the store). The store's manifest is
  written last and atomically, after ``origin.json`` (where it came from); fetching again with
  more label sets adds only the parts that are missing.

A manifest from someone else is untrusted: a part entry must name exactly its part's file
(``graphs.mdb``, ``labels-<set>.mdb``: a plain name, never a path such as ``../x``), a
non-negative integer size and 64 hex digits of sha256, and the label parts must be exactly the
manifest's descriptor sets; anything else is refused with :class:`schemas.StoreError`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fingerprint_pretrain.builder.build import BuildError
from fingerprint_pretrain.schemas.manifest import (
    GRAPHS_PART,
    MANIFEST_NAME,
    StoreError,
    check_parts,
    part_file,
    read_manifest,
    write_json_atomic,
)
from fingerprint_pretrain.schemas.store import ORIGIN_NAME

if TYPE_CHECKING:
    from fingerprint_pretrain.builder.datasets.download import Fetcher

__all__ = [
    "FetchResult",
    "PackResult",
    "fetch_store",
    "fetched_from",
    "is_store_source",
    "pack_store",
    "part_entries",
    "part_file",
    "store_name",
]

GRAPHS = GRAPHS_PART
SUMS_NAME = "SHA256SUMS"
#: a manifest is a few kB to a few MB (feature names of nine sets); anything larger is refused.
MAX_MANIFEST_BYTES = 32 << 20
SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
BLOCK = 1 << 20


# --------------------------------------------------------------------------------------------
# Part entries of a manifest
# --------------------------------------------------------------------------------------------
def part_entries(manifest: dict[str, Any], where: str | os.PathLike) -> dict[str, dict]:
    """The checked ``manifest["parts"]``: ``{part name: {"file", "bytes", "sha256"}}``, graphs
    first, then the label sets in the manifest's order.

    The entries are checked by :func:`schemas.manifest.check_parts` (plain file names, sizes,
    sha256, exactly graphs plus the descriptor sets); a manifest without ``parts`` is refused
    here too, since a single-file store cannot be packed or fetched in parts.

    Raises:
        StoreError: no ``parts`` (a single-file store), or an entry that is not well formed.
    """
    if manifest.get("parts") is None:
        raise StoreError(
            f"{where}: a single-file store (its manifest lists no parts); it cannot be packed "
            f"or fetched in parts (convert it first: fp-build convert STORE)"
        )
    check_parts(manifest, where)
    parts = manifest["parts"]
    return {
        name: {key: parts[name][key] for key in ("file", "bytes", "sha256")}
        for name in (GRAPHS, *manifest.get("descriptors", {}))
    }


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(BLOCK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _present(folder: Path, entry: dict) -> bool:
    """A part is present when its file exists with the listed size (no checksum)."""
    path = folder / entry["file"]
    return path.is_file() and path.stat().st_size == entry["bytes"]


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# pack
# --------------------------------------------------------------------------------------------
@dataclass
class PackResult:
    """What :func:`pack_store` wrote: the folder, the parts (name -> bytes), how many were
    hard-linked rather than copied."""

    out: Path
    parts: dict[str, int]
    linked: int


def pack_store(
    store: str | os.PathLike,
    out: str | os.PathLike,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> PackResult:
    """Write what a data repository needs to serve ``store``: see the module docstring.

    Every part must be present and match the manifest's size and sha256: a store with absent
    parts (fetched with some label sets only) or a damaged one is refused, because a published
    manifest that lists a part its folder cannot serve breaks every fetch of that part.

    Raises:
        StoreError: not a store of parts, a part absent or not matching its manifest entry.
        BuildError: ``out`` exists and is not empty (without ``overwrite``), or is the store.
    """
    store, out = Path(store), Path(out)
    manifest = read_manifest(store)
    parts = part_entries(manifest, store / MANIFEST_NAME)
    if out.resolve() == store.resolve():
        raise BuildError(f"{out}: is the store itself; pack into another folder")
    for name, entry in parts.items():
        path = store / entry["file"]
        if not path.is_file():
            raise StoreError(
                f"{path}: part {name!r} is absent; a store is packed only with all its parts "
                f"(get it first: fp-build fetch <its origin> --labels {name}, or rebuild it)"
            )
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise StoreError(
                f"{path}: part {name!r} has {size:,} bytes, the manifest lists "
                f"{entry['bytes']:,}; the store is damaged (fp-build verify {store})"
            )
        found = sha256_of(path)
        if found != entry["sha256"]:
            raise StoreError(
                f"{path}: part {name!r} has sha256 {found}, the manifest lists "
                f"{entry['sha256']}; the store is damaged (fp-build verify {store})"
            )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BuildError(f"{out}: exists and is not empty (pass --overwrite to replace its files)")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # a re-pack is not a pack until it ends
    linked = 0
    for entry in parts.values():
        linked += _place(store / entry["file"], out / entry["file"], entry["sha256"])
    manifest_bytes = (store / MANIFEST_NAME).read_bytes()
    sums = [f"{e['sha256']}  {e['file']}" for e in parts.values()]
    sums.append(f"{hashlib.sha256(manifest_bytes).hexdigest()}  {MANIFEST_NAME}")
    _write_bytes_atomic(out / SUMS_NAME, ("\n".join(sums) + "\n").encode())
    _write_bytes_atomic(out / "README.txt", _readme(store.name, manifest, parts).encode())
    _write_bytes_atomic(out / MANIFEST_NAME, manifest_bytes)  # last: the folder is complete
    log(
        f"packed {store} into {out}: {len(parts)} parts, "
        f"{sum(e['bytes'] for e in parts.values()):,} bytes ({linked} hard-linked)"
    )
    return PackResult(out, {n: e["bytes"] for n, e in parts.items()}, linked)


def _place(src: Path, dst: Path, sha256: str) -> bool:
    """Put ``src`` at ``dst`` (hard link, else a copy checked against ``sha256``), through a
    temporary name. Returns True when hard-linked."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        linked = True
    except OSError:  # another file system, or links not allowed
        linked = False
    if not linked:
        digest = hashlib.sha256()
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            for chunk in iter(lambda: fin.read(BLOCK), b""):
                digest.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        if digest.hexdigest() != sha256:
            tmp.unlink()
            raise StoreError(f"{src}: changed while it was copied to {dst}; pack again")
    os.replace(tmp, dst)
    return linked


def _readme(name: str, manifest: dict, parts: dict[str, dict]) -> str:
    sets = [n for n in parts if n != GRAPHS]
    lines = [
        f"{name}: a fingerprint-pretrain store of parts (schema {manifest['schema_version']}).",
        f"{manifest['counts']['records']:,} structures; content hash {manifest['content_hash']}.",
        "",
        "Files: manifest.json (what the store holds, and every part's size and sha256),",
        "graphs.mdb (the periodic graphs and targets) and one labels-<set>.mdb per label set:",
    ]
    lines += [f"  {e['file']:<28} {e['bytes']:>15,} bytes" for e in parts.values()]
    lines += [
        "SHA256SUMS checks them all: sha256sum -c SHA256SUMS",
        "",
        "Fetch it with fingerprint-pretrain (only the parts you ask for are downloaded, each",
        "verified before use):",
        f"  {'fp-build fetch URL':<40}# the whole store",
        f"  {'fp-build fetch URL --labels ' + (sets[0] if sets else 'SET'):<40}# graphs + one set",
        f"  {'fp-build fetch URL --labels none':<40}# graphs only",
        "where URL is this folder's address (the one that serves manifest.json).",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------
def is_store_source(arg: str) -> bool:
    """True when ``arg`` names a prebuilt store (a URL, or a local folder holding a
    ``manifest.json``) rather than a registry dataset name."""
    if re.match(r"(?i)(https?|file)://", arg):
        return True
    return (Path(arg).expanduser() / MANIFEST_NAME).is_file()


def base_url(arg: str) -> str:
    """The URL of the folder that serves the store, ending in ``/`` (a local folder becomes a
    ``file://`` URL; a URL ending in ``manifest.json`` is its folder)."""
    if not re.match(r"(?i)(https?|file)://", arg):
        return Path(arg).expanduser().resolve().as_uri() + "/"
    parsed = urllib.parse.urlsplit(arg)
    path = parsed.path
    if path.endswith("/" + MANIFEST_NAME):
        path = path[: -len(MANIFEST_NAME)]
    if not path.endswith("/"):
        path += "/"
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, parsed.query, ""))


def file_url(base: str, name: str) -> str:
    """The URL of file ``name`` in the folder ``base`` (a query such as ``?download=1`` is kept
    after the file name)."""
    parsed = urllib.parse.urlsplit(base)
    path = parsed.path + urllib.parse.quote(name)
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, parsed.query, ""))


def store_name(url: str) -> str:
    """The local store name of a published one: the last component of its folder's URL, with
    ``.lmdb`` (``https://host/x/jdft2d.lmdb/`` and ``.../jdft2d/`` -> ``jdft2d.lmdb``).

    Raises:
        StoreError: the URL has no usable last component.
    """
    last = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    stem = last.removesuffix(".lmdb")
    if not SET_NAME.fullmatch(stem):
        raise StoreError(f"{url}: cannot name a local store after {last!r}; pass --store PATH")
    return stem + ".lmdb"


@dataclass
class FetchResult:
    """What :func:`fetch_store` did.

    Attributes:
        store: the local store.
        url: the folder it came from.
        fetched: parts downloaded now (name -> bytes).
        kept: parts that were already present (name -> bytes).
        absent: label sets the store lists but that are not here.
        seconds: wall time of the whole fetch (manifest, parts, moves), s.
    """

    store: Path
    url: str
    fetched: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    seconds: float = 0.0


def read_remote_manifest(
    url: str, timeout: float = 60.0, retries: int = 4, backoff: float = 1.0, log=print
) -> tuple[bytes, dict, dict[str, dict]]:
    """Download and check ``<url>/manifest.json``: at most :data:`MAX_MANIFEST_BYTES`, UTF-8
    JSON of this format, a schema version this code reads, a matching digest and well-formed
    parts (:func:`part_entries`).

    Returns:
        ``(its bytes, the parsed manifest, its checked part entries)``.

    Raises:
        DownloadError: it cannot be had (HTTP errors, retries exhausted, too large).
        StoreError: it is not an acceptable manifest.
    """
    where = file_url(url, MANIFEST_NAME)
    data = _get(where, MAX_MANIFEST_BYTES, timeout, retries, backoff, log)
    with tempfile.TemporaryDirectory(prefix="fp-manifest-") as tmp:
        (Path(tmp) / MANIFEST_NAME).write_bytes(data)
        try:
            manifest = read_manifest(tmp)
        except StoreError as err:  # name the URL, not the temporary copy
            raise type(err)(str(err).replace(str(Path(tmp) / MANIFEST_NAME), where)) from None
    return data, manifest, part_entries(manifest, where)


def _get(url: str, cap: int, timeout: float, retries: int, backoff: float, log) -> bytes:
    """The body of ``url`` (at most ``cap`` bytes), retrying what may be transient."""
    from fingerprint_pretrain.builder.datasets.download import (
        RETRYABLE_HTTP,
        USER_AGENT,
        DownloadError,
    )

    last = "no attempt"
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            log(f"  retry {attempt}/{retries} of {url} in {delay:.0f} s ({last})")
            time.sleep(delay)
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                data = response.read(cap + 1)
                length = response.headers.get("Content-Length")
        except urllib.error.HTTPError as err:
            if err.code not in RETRYABLE_HTTP:
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
            last = f"HTTP {err.code} {err.reason}"
            continue
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            last = f"{type(err).__name__}: {getattr(err, 'reason', None) or err}"
            continue
        if len(data) > cap:
            raise DownloadError(f"{url}: larger than {cap:,} bytes; not a store manifest")
        if length is not None and length.isdigit() and int(length) != len(data):
            last = f"connection closed at {len(data):,} of {int(length):,} bytes"
            continue
        return data
    raise DownloadError(f"{url}: failed after {retries + 1} attempts ({last})")


def _choose(parts: dict[str, dict], labels: Sequence[str] | None, where: str) -> list[str]:
    """Parts to have: graphs plus ``labels`` (None: all; ``[]``: none)."""
    sets = [n for n in parts if n != GRAPHS]
    if labels is None:
        return [GRAPHS, *sets]
    unknown = [s for s in labels if s not in sets]
    if unknown:
        raise BuildError(
            f"{where}: label set(s) {unknown} not in this store (it has: {sets or 'none'})"
        )
    return [GRAPHS, *dict.fromkeys(labels)]


def _local_state(store: Path, manifest: dict, url: str, overwrite: bool, log) -> dict | None:
    """Check what is at ``store`` before fetching into it; returns its manifest (None: no
    finished store there). Removes it first with ``overwrite`` when it is another store.

    Raises:
        BuildError: it holds another store, or files that are not this store's parts.
    """
    if not store.exists():
        return None
    if (store / MANIFEST_NAME).is_file():
        local = read_manifest(store)
        if local.get("content_hash") == manifest.get("content_hash"):
            return local
        if not overwrite:
            raise BuildError(
                f"{store}: holds another store (content hash {local.get('content_hash')}), not "
                f"the one at {url} ({manifest.get('content_hash')}); pass --overwrite to "
                f"replace it"
            )
        log(f"  {store}: replacing another store (--overwrite)")
        shutil.rmtree(store)
        return None
    ours = {p["file"] for p in manifest["parts"].values()} | {
        ORIGIN_NAME,
        MANIFEST_NAME + ".tmp",
        ORIGIN_NAME + ".tmp",
    }
    strangers = sorted(p.name for p in store.iterdir() if p.name not in ours)
    if strangers:
        raise BuildError(
            f"{store}: exists and is neither a store nor an interrupted fetch of {url} (it "
            f"holds {strangers[:3]}); choose another --out or remove it"
        )
    return None


def fetch_store(
    source: str,
    store: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    labels: Sequence[str] | None = None,
    verify: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
) -> FetchResult:
    """Fetch the published store at ``source`` (URL or local folder) into ``store``.

    In order: the remote manifest (:func:`read_remote_manifest`), what is already at ``store``
    (:func:`_local_state`), the parts asked for that are not there (:func:`_fetch_parts`),
    ``origin.json`` and the manifest (:func:`_write_manifest`), then verification.

    Args:
        store: the local store (default ``out_dir / store_name(url)``).
        out_dir: folder of the stores (default ``$FP_DATA/stores``).
        labels: label sets to have besides the graphs (None: all; ``[]``: graphs only).
        verify: also check the sha256 of parts already present (downloaded parts are always
            checked) and run :func:`fingerprint_pretrain.builder.info.verify_store` on the result.
        overwrite: replace another store at ``store``.

    Returns:
        What was fetched and kept; ``absent`` lists the label sets left out.

    Raises:
        DownloadError / ChecksumError: a file could not be had, or did not match.
        StoreError: the remote manifest is not acceptable, or the result fails verification.
        BuildError: ``store`` holds something else.
    """
    from fingerprint_pretrain.builder.datasets.download import Fetcher

    start = time.perf_counter()
    url = base_url(source)
    data, manifest, parts = read_remote_manifest(url, timeout, retries, backoff, log)
    store = _store_path(url, store, out_dir)
    wanted = _choose(parts, labels, url)
    local = _local_state(store, manifest, url, overwrite, log)
    local_parts = part_entries(local, store / MANIFEST_NAME) if local else {}
    store.mkdir(parents=True, exist_ok=True)
    staging = store.with_name(store.name + ".download")
    fetcher = Fetcher(
        staging, progress=progress, retries=retries, backoff=backoff, timeout=timeout, log=log
    )
    result = FetchResult(store, url)
    entries = _fetch_parts(fetcher, result, parts, local_parts, wanted, verify, log)
    result.absent = [n for n in parts if n != GRAPHS and not _present(store, entries[n])]
    _write_origin(store, url, parts, result)
    _write_manifest(store, data, manifest, parts, entries)
    shutil.rmtree(staging, ignore_errors=True)
    if verify:
        from fingerprint_pretrain.builder.info import verify_store

        ok, lines = verify_store(store, progress=False)
        if not ok:
            raise StoreError(f"{store}: fetched from {url} but fails verification: {lines[-1]}")
    result.seconds = time.perf_counter() - start
    return result


def _store_path(
    url: str, store: str | os.PathLike | None, out_dir: str | os.PathLike | None
) -> Path:
    """The local store of :func:`fetch_store`: ``store``, else ``out_dir`` (default
    ``$FP_DATA/stores``) / :func:`store_name`."""
    if store is not None:
        return Path(store)
    from fingerprint_pretrain.schemas.locations import data_home

    folder = Path(out_dir) if out_dir else data_home() / "stores"
    return folder / store_name(url)


def _fetch_parts(
    fetcher: Fetcher,
    result: FetchResult,
    parts: dict[str, dict],
    local_parts: dict[str, dict],
    wanted: list[str],
    verify: bool,
    log: Callable[[str], None],
) -> dict[str, dict]:
    """Download the parts of ``wanted`` that are not at ``result.store`` already (present with
    the listed size and, with ``verify``, sha256), recording each in ``result.fetched`` or
    ``result.kept``.

    Returns:
        The part entries the local manifest lists: the remote ones, except that a part built
        locally (present, in ``local_parts``) keeps its own entry.

    Raises:
        DownloadError / ChecksumError: a part could not be had, or did not match.
    """
    from fingerprint_pretrain.builder.datasets.download import ChecksumError
    from fingerprint_pretrain.builder.datasets.registry import RemoteFile

    store, url = result.store, result.url
    entries = dict(parts)
    for name in wanted:
        entry = parts[name]
        mine = local_parts.get(name, entry)
        if _present(store, mine) and (
            not verify or sha256_of(store / mine["file"]) == mine["sha256"]
        ):
            entries[name] = mine  # a locally built part keeps its own entry
            result.kept[name] = mine["bytes"]
            continue
        if (store / entry["file"]).exists():
            log(f"  {store / entry['file']}: does not match its manifest entry; fetching it again")
        spec = RemoteFile(
            entry["file"],
            (file_url(url, entry["file"]),),
            entry["sha256"],
            size=entry["bytes"],
        )
        try:
            got = fetcher.fetch(spec)
        except ChecksumError as err:
            raise ChecksumError(f"part {name!r} of {url}: {err}") from None
        os.replace(got.path, store / entry["file"])
        result.fetched[name] = entry["bytes"]
    for name in parts:
        if name not in wanted and local_parts.get(name) and _present(store, local_parts[name]):
            entries[name] = local_parts[name]
    return entries


def _write_manifest(
    store: Path, data: bytes, manifest: dict, parts: dict[str, dict], entries: dict[str, dict]
) -> None:
    """The local manifest, last and atomically: the publisher's bytes unchanged when every part
    entry is the publisher's, else its manifest with ``entries`` as its parts."""
    if entries == parts:
        _write_bytes_atomic(store / MANIFEST_NAME, data)
    else:
        write_json_atomic(store / MANIFEST_NAME, {**manifest, "parts": entries})


def _write_origin(store: Path, url: str, parts: dict[str, dict], result: FetchResult) -> None:
    """``origin.json``: the URL and, per part fetched from it, its entry and when."""
    path = store / ORIGIN_NAME
    previous = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            previous = {}
    fetched = previous.get("parts", {}) if previous.get("url") == url else {}
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for name in result.fetched:
        fetched[name] = {**parts[name], "fetched": now}
    write_json_atomic(path, {"url": url, "parts": fetched})


def fetched_from(store: str | os.PathLike) -> str | None:
    """The URL ``store`` was fetched from (its ``origin.json``), or None (built locally, or an
    unreadable ``origin.json``)."""
    try:
        url = json.loads((Path(store) / ORIGIN_NAME).read_text()).get("url")
    except (OSError, ValueError, AttributeError):
        return None
    return url if isinstance(url, str) else None
