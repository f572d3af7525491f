"""Getting a registry file: from the download cache, a local mirror, or over HTTP.

:class:`Fetcher` finds a :class:`~builder.datasets.registry.RemoteFile` in this order:

1. the download cache (``$FP_DATA/downloads``, default ``~/.cache/fingerprint-pretrain``);
2. each ``--from-dir`` folder (a lab mirror, ``../shared/datasets``), under the file's name or
   one of its known aliases; used in place, never copied;
3. its URLs (not with ``offline``): a streaming download into ``<name>.part`` with a tqdm
   progress bar; an interrupted transfer is resumed with an HTTP ``Range`` request (a server
   that ignores it is read from the start again); connection errors, timeouts and HTTP
   408/429/5xx are retried with exponential backoff; other HTTP errors (404, 403, ...) are
   final for that URL.

Nothing is used before its checksum matches (sha256, git blob id or figshare's md5, whichever
the registry has). A download that does not match is moved aside to ``<name>.bad`` and the error
names the file, the URL, the expected and the found checksum; a cached file that no longer
matches is moved aside the same way; a mirror's copy that does not match is skipped (the mirror
is not ours to change). Files without a published checksum (user-supplied) are used with a
warning that records their sha256.

Only the standard library's ``urllib`` is used, so there is no dependency to install.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import fingerprint_pretrain.builder
from fingerprint_pretrain.builder.build import BuildError
from fingerprint_pretrain.builder.datasets.registry import RemoteFile
from fingerprint_pretrain.schemas.locations import (
    data_home,
)  # re-exported: fingerprint_pretrain.builder.datasets.download API

__all__ = [
    "ChecksumError",
    "DownloadError",
    "Fetched",
    "Fetcher",
    "data_home",
    "file_digests",
    "verify_file",
]

USER_AGENT = f"fingerprint-pretrain/{fingerprint_pretrain.builder.__version__} (+fp-build fetch)"
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}
BLOCK = 1 << 20


class DownloadError(BuildError):
    """A file that cannot be had; the message says what was tried and what to do."""


class ChecksumError(DownloadError):
    """A file whose content is not the published one (it is never used)."""


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------
def file_digests(path: str | os.PathLike, with_git_blob: bool = False) -> dict[str, str]:
    """sha256 and md5 of a file (and its git blob id), in one pass."""
    path = Path(path)
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    blob = hashlib.sha1(usedforsecurity=False) if with_git_blob else None
    if blob is not None:
        blob.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(BLOCK), b""):
            sha.update(chunk)
            md5.update(chunk)
            if blob is not None:
                blob.update(chunk)
    out = {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}
    if blob is not None:
        out["git_blob_sha1"] = blob.hexdigest()
    return out


def verify_file(
    path: Path, spec: RemoteFile, expected: dict[str, str], alias_sha256: str | None = None
) -> tuple[bool, str, dict[str, str]]:
    """Check ``path`` against what is known of ``spec``.

    Args:
        expected: extra published checksums (``md5`` from figshare's API, ``sha256`` recorded
            when the file was verified before).
        alias_sha256: the file is a known alias of ``spec``: compare with this sha256 instead.

    Returns:
        ``(ok, what was compared: "expected X, found Y", digests)``; ``ok`` is None when there
        is nothing to compare with.
    """
    digests = file_digests(path, with_git_blob=spec.git_blob_sha1 is not None)
    if alias_sha256 is not None:
        checks = [("sha256", alias_sha256)]
    else:
        checks = [
            (kind, value)
            for kind, value in (
                ("sha256", spec.sha256),
                ("git_blob_sha1", spec.git_blob_sha1),
                ("md5", expected.get("md5")),
                ("sha256", expected.get("sha256")),
            )
            if value
        ]
        if spec.size is not None and path.stat().st_size != spec.size:
            return (
                False,
                f"expected {spec.size:,} bytes, found {path.stat().st_size:,}",
                digests,
            )
    if not checks:
        return None, f"no published checksum; sha256 {digests['sha256']}", digests
    for kind, value in checks:
        if digests[kind] != value.lower():
            return False, f"expected {kind} {value}, found {digests[kind]}", digests
    kind, value = checks[0]
    return True, f"{kind} {value} matches", digests


# --------------------------------------------------------------------------------------------
# Fetcher
# --------------------------------------------------------------------------------------------
@dataclass
class Fetched:
    """A file ready to use: where it is, its sha256 and how it was checked."""

    spec: RemoteFile
    path: Path
    sha256: str
    how: str  # "cache", "from-dir", "download"
    check: str  # e.g. "sha256 ... matches"
    verified: bool


@dataclass
class Fetcher:
    """Finds, downloads and verifies registry files.

    Attributes:
        cache: download folder (created when needed).
        from_dirs: local mirrors searched after the cache.
        offline: never touch the network.
        progress: tqdm bars for downloads.
        retries: further attempts per URL after a failed one.
        backoff: seconds before the first retry, doubled each time.
        timeout: socket timeout, seconds.
        figshare_api: figshare API root (``$FP_FIGSHARE_API`` overrides, for tests/mirrors).
        log: where notes go (one line each).
    """

    cache: Path
    from_dirs: Sequence[Path] = ()
    offline: bool = False
    progress: bool = True
    retries: int = 4
    backoff: float = 1.0
    timeout: float = 60.0
    figshare_api: str = field(
        default_factory=lambda: os.environ.get("FP_FIGSHARE_API", "https://api.figshare.com/v2")
    )
    log: Callable[[str], None] = print

    def __post_init__(self) -> None:
        self.cache = Path(self.cache)
        self.from_dirs = [Path(d) for d in self.from_dirs]

    # ---------------------------------------------------------------- local look-up
    def locate(self, spec: RemoteFile) -> tuple[Fetched | None, list[str]]:
        """A verified local copy (cache, then mirrors), without any network access except
        figshare's API for a file whose only checksum is figshare's (not when offline).

        Returns:
            ``(fetched or None, notes on candidates that were found but not used)``.
        """
        notes: list[str] = []
        cached = self.cache / spec.name
        if cached.is_file():
            ok, what, digests = verify_file(cached, spec, self._expected(spec, cached, local=True))
            if ok or (ok is None and spec.figshare is None):
                return self._accept(spec, cached, "cache", what, digests, ok), notes
            if ok is None:  # figshare-only file never verified: not trusted from the cache
                notes.append(f"{cached}: never verified ({what}); downloading again")
            else:
                bad = self._quarantine(cached)
                notes.append(f"{cached}: {what}; moved aside to {bad.name}")
        for folder in self.from_dirs:
            candidates = [(folder / spec.name, None)] + [
                (folder / alias, sha) for alias, sha in spec.aliases
            ]
            for path, alias_sha in candidates:
                if not path.is_file():
                    continue
                expected = {} if alias_sha else self._expected(spec, path, local=True)
                ok, what, digests = verify_file(path, spec, expected, alias_sha)
                if ok is False:
                    notes.append(f"{path}: {what}; not used")
                    continue
                return self._accept(spec, path, "from-dir", what, digests, ok), notes
        return None, notes

    def present(self, spec: RemoteFile) -> Path | None:
        """A local copy by name only (no checksum): for listings."""
        for path in [self.cache / spec.name] + [
            folder / name
            for folder in self.from_dirs
            for name in [spec.name, *(a for a, _ in spec.aliases)]
        ]:
            if path.is_file():
                return path
        return None

    def fetch(self, spec: RemoteFile) -> Fetched:
        """A verified copy of ``spec``: local if there is one, else downloaded.

        Raises:
            ChecksumError: every copy found or downloaded has the wrong content.
            DownloadError: not available (offline and not local, no URL, HTTP errors...).
        """
        found, notes = self.locate(spec)
        if found is not None:
            return found
        for note in notes:
            self.log(f"  note: {note}")
        looked = [str(self.cache)] + [str(d) for d in self.from_dirs]
        names = ", ".join([spec.name, *(a for a, _ in spec.aliases)])
        if not spec.urls:
            raise DownloadError(
                f"{spec.name}: no public URL; put it ({names}) in a folder given with "
                f"--from-dir (looked in: {', '.join(looked)})"
                + (f"; {'; '.join(notes)}" if notes else "")
            )
        if self.offline:
            raise DownloadError(
                f"{spec.name}: not available offline (looked for {names} in "
                f"{', '.join(looked)}); download it from {spec.urls[0]}"
                + (f"; {'; '.join(notes)}" if notes else "")
            )
        errors: list[str] = []
        for url in spec.urls:
            try:
                return self._download(spec, url)
            except ChecksumError:
                raise
            except DownloadError as err:
                errors.append(str(err))
        raise DownloadError("; ".join(errors))

    # ---------------------------------------------------------------- download
    def _download(self, spec: RemoteFile, url: str) -> Fetched:
        self.cache.mkdir(parents=True, exist_ok=True)
        final = self.cache / spec.name
        part = self.cache / (spec.name + ".part")
        expected = self._expected(spec, None, local=False)
        if spec.figshare and "md5" not in expected:
            raise DownloadError(
                f"{spec.name}: cannot get figshare's md5 for file {spec.figshare[1]} from "
                f"{self.figshare_api}; not downloading a file that cannot be checked"
            )
        total = spec.size or expected.get("size")
        self._transfer(url, part, total, cap=spec.size)
        ok, what, digests = verify_file(part, spec, expected)
        if ok is False:
            bad = self._quarantine(part, final)
            raise ChecksumError(
                f"{spec.name}: the file downloaded from {url} is not the published one: {what}; "
                f"it was not used (kept aside as {bad})"
            )
        os.replace(part, final)
        return self._accept(spec, final, "download", what, digests, ok)

    def _transfer(self, url: str, part: Path, total: int | None, cap: int | None = None) -> None:
        """Download ``url`` into ``part``, resuming what is there; retries with backoff.

        ``cap``: the file's published size; a server that sends more is cut off one byte past
        it (verification then refuses the file), so a bad server cannot fill the disk."""
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1)
                self.log(f"  retry {attempt}/{self.retries} of {url} in {delay:.0f} s ({last})")
                time.sleep(delay)
            have = part.stat().st_size if part.exists() else 0
            if total is not None and have == total:
                return
            headers = {"User-Agent": USER_AGENT}
            if have:
                headers["Range"] = f"bytes={have}-"
            request = urllib.request.Request(url, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    status = response.status
                    size = _int(response.headers.get("Content-Length"))
                    if have and status == 206:
                        start, full = _content_range(response.headers.get("Content-Range"))
                        if start != have:  # not the range we asked for: start over
                            part.unlink()
                            last = f"server resumed at byte {start}, not {have}"
                            continue
                        mode, total = "ab", full or total
                    else:  # 200: a fresh transfer (the server may have ignored Range)
                        mode, have = "wb", 0
                        total = size if size is not None else total
                    self._stream(response, part, mode, have, total, url, cap)
                written = part.stat().st_size
                if cap is not None and written > cap:  # more than published: verification says so
                    return
                if total is not None and written < total:
                    last = f"connection closed at {written:,} of {total:,} bytes"
                    continue
                return
            except urllib.error.HTTPError as err:
                if err.code == 416 and have:  # nothing left to send: verification decides
                    return
                if err.code not in RETRYABLE_HTTP:
                    raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
                last = f"HTTP {err.code} {err.reason}"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                reason = getattr(err, "reason", None) or err
                last = f"{type(err).__name__}: {reason}"
        raise DownloadError(f"{url}: failed after {self.retries + 1} attempts ({last})")

    def _stream(
        self, response, part: Path, mode: str, have: int, total, url: str, cap=None
    ) -> None:
        from tqdm import tqdm

        with (
            open(part, mode) as fh,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not self.progress,
                dynamic_ncols=True,
            ) as bar,
        ):
            while True:
                chunk = response.read(1 << 16)
                if not chunk:
                    break
                if cap is not None and have + len(chunk) > cap:
                    # one byte too many: verification refuses it
                    fh.write(chunk[: max(0, cap + 1 - have)])
                    break
                fh.write(chunk)
                have += len(chunk)
                bar.update(len(chunk))

    # ---------------------------------------------------------------- helpers
    def _expected(self, spec: RemoteFile, path: Path | None, local: bool) -> dict:
        """Checksums beyond the registry's: a previously recorded sha256 (cache) and figshare's
        md5 (from its API; not offline)."""
        out: dict = {}
        record = self.cache / (spec.name + ".sha256")
        if path is not None and path.parent == self.cache and record.is_file():
            out["sha256"] = record.read_text().split()[0]
        if spec.figshare and not (local and (self.offline or "sha256" in out)):
            info = self._figshare_file(*spec.figshare)
            if info:
                out["md5"] = info.get("computed_md5") or info.get("supplied_md5")
                if info.get("size"):
                    out["size"] = int(info["size"])
        return out

    def _figshare_file(self, article: int, file_id: int) -> dict | None:
        url = f"{self.figshare_api.rstrip('/')}/articles/{article}"
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                meta = json.load(response)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            self.log(f"  note: figshare API {url}: {err}")
            return None
        for entry in meta.get("files", []):
            if int(entry.get("id", -1)) == int(file_id):
                return entry
        return None

    def _accept(self, spec, path: Path, how: str, what: str, digests: dict, ok) -> Fetched:
        if ok is None:
            self.log(f"  warning: {path}: {what}; used without verification")
        elif path.parent == self.cache:
            record = self.cache / (spec.name + ".sha256")
            if not record.is_file():
                record.write_text(f"{digests['sha256']}  {spec.name}  ({what})\n")
        return Fetched(spec, path, digests["sha256"], how, what, bool(ok))

    def _quarantine(self, path: Path, final: Path | None = None) -> Path:
        """Move a file whose content is wrong out of the way (``<name>.bad``), and forget any
        checksum recorded for it."""
        target = final or path
        bad = target.with_name(target.name + ".bad")
        shutil.move(str(path), bad)
        (target.parent / (target.name + ".sha256")).unlink(missing_ok=True)
        return bad


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` -> (START, TOTAL); None where absent."""
    match = re.match(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)", value or "")
    if not match:
        return None, None
    total = match.group(3)
    return int(match.group(1)), (int(total) if total != "*" else None)
