"""A damaged LMDB store gives an error naming the store, never a crash.

liblmdb memory-maps a store's LMDB files (the parts ``graphs.mdb`` and ``labels-<set>.mdb``):
before the guard, a truncated file killed the reading process with SIGBUS. Every damage is
tried on every part, and every read here runs in a subprocess, so a crash fails the test (exit
status -7) instead of killing pytest. A part's size is listed in the manifest, but outside its
digest: the checks of the file itself must hold when that size was edited to match.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

READ_ALL = """
import sys
from fingerprint_pretrain.schemas import RecordError, StoreError, open_store
try:
    store = open_store(sys.argv[1])
    store.num_atoms()
    for i in range(len(store)):
        store[i]
except (StoreError, RecordError) as err:
    print(f"{type(err).__name__}: {err}", file=sys.stderr)
    sys.exit(3)
print("read", len(store))
"""


def read_all(store: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", READ_ALL, str(store)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def damaged_copy(tiny_lmdb: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged.lmdb"
    shutil.copytree(tiny_lmdb, copy)
    return copy


PARTS = ["graphs.mdb", "labels-gmpset1.mdb"]


def resize_in_manifest(store: Path, part: str) -> None:
    """Make the manifest list ``part``'s present size (what an attacker could do: ``parts`` is
    outside the manifest digest)."""
    manifest = json.loads((store / "manifest.json").read_text())
    for entry in manifest["parts"].values():
        if entry["file"] == part:
            entry["bytes"] = (store / part).stat().st_size
    (store / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("manifest_follows", [False, True], ids=["size-check", "file-check"])
@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize("keep", [0.9, 0.5, 8192, 4096, 100, 0])
def test_truncated_data_file_is_refused_naming_the_store(
    tiny_lmdb, tmp_path, keep, part, manifest_follows
):
    copy = damaged_copy(tiny_lmdb, tmp_path)
    data = copy / part
    size = data.stat().st_size
    os.truncate(data, int(size * keep) if isinstance(keep, float) else keep)
    if manifest_follows:
        resize_in_manifest(copy, part)
    result = read_all(copy)
    assert result.returncode == 3, (result.returncode, result.stderr[-2000:])
    message = result.stderr.strip()
    assert message.startswith("StoreError: ") and str(copy) in message
    assert f"{part} is truncated" in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("part", PARTS)
def test_verify_and_train_on_a_truncated_store_report_it(tiny_lmdb, tmp_path, part):
    copy = damaged_copy(tiny_lmdb, tmp_path)
    os.truncate(copy / part, (copy / part).stat().st_size // 2)
    bin_dir = Path(sys.executable).parent
    verify = subprocess.run(
        [bin_dir / "fp-build", "verify", copy], capture_output=True, text=True, timeout=120
    )
    assert verify.returncode == 1, verify.stderr[-2000:]
    assert f"{copy}: CORRUPT" in verify.stdout and f"{part}: MISMATCH" in verify.stdout
    train = subprocess.run(
        [bin_dir / "fp-train", "pretrain", "--store", copy, "--descriptor", "gmpset1"]
        + ["--run-dir", tmp_path / "run", "--epochs", "1", "--num-workers", "0", "--cutoff", "4"]
        + ["--hidden-channels", "8", "--num-layers", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 1, (train.returncode, train.stderr[-2000:])
    assert train.stderr.startswith("fp-train: error:") and f"{part} is truncated" in train.stderr
    assert "Traceback" not in train.stderr


@pytest.mark.parametrize("part, key", [("graphs.mdb", b"g/0000000002"), (PARTS[1], b"d/gmpset1/")])
def test_a_value_size_beyond_the_file_is_refused_before_it_is_read(tiny_lmdb, tmp_path, part, key):
    """A leaf node whose 32-bit value size was damaged: liblmdb would hand out a buffer running
    ~2 GB past the end of the file (copying it: SIGBUS)."""
    copy = damaged_copy(tiny_lmdb, tmp_path)
    data = bytearray((copy / part).read_bytes())
    # LMDB leaf node (lmdb.h): u16 size low, u16 size high, u16 flags (1 = value in overflow
    # pages, 0 = inline), u16 key size, then the key.
    hits = [
        k
        for k in range(8, len(data))
        if data.startswith(key, k)
        and data[k - 4 : k - 2] in (b"\x00\x00", b"\x01\x00")
        and int.from_bytes(data[k - 2 : k], "little") == len(key) + (10 if key[-1:] == b"/" else 0)
    ]
    assert hits
    for k in hits:
        data[k - 6 : k - 4] = b"\x00\x80"  # size high word: + 2 GiB
    (copy / part).write_bytes(data)
    result = read_all(copy)
    assert result.returncode == 3, (result.returncode, result.stderr[-2000:])
    assert f"{part} is damaged" in result.stderr and "runs past the" in result.stderr


@pytest.mark.parametrize("part", PARTS)
def test_damaged_meta_pages_are_refused(tiny_lmdb, tmp_path, part):
    copy = damaged_copy(tiny_lmdb, tmp_path)
    data = bytearray((copy / part).read_bytes())
    page_size = int.from_bytes(data[40:44], "little")
    data[136 : 136 + 8] = (10**9).to_bytes(8, "little")  # meta 0's last page
    data[page_size + 136 : page_size + 144] = (10**9).to_bytes(8, "little")  # meta 1's
    (copy / part).write_bytes(data)
    result = read_all(copy)
    assert result.returncode == 3 and f"{part} is truncated" in result.stderr
    data[16:20] = b"\0\0\0\0"  # meta 0's magic
    (copy / part).write_bytes(data)
    result = read_all(copy)
    assert result.returncode == 3 and "meta page 0 is not an LMDB meta page" in result.stderr


def test_an_intact_store_reads(tiny_lmdb):
    result = read_all(tiny_lmdb)
    assert result.returncode == 0 and result.stdout.strip() == "read 6"
