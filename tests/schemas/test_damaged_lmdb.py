"""A damaged LMDB store gives an error naming the store, never a crash.

liblmdb memory-maps ``data.mdb``: before the guard, a truncated file killed the reading
process with SIGBUS. Every read here runs in a subprocess, so a crash fails the test (exit
status -7) instead of killing pytest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

READ_ALL = """
import sys
from schemas import RecordError, StoreError, open_store
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


@pytest.mark.parametrize("keep", [0.9, 0.5, 8192, 4096, 100, 0])
def test_truncated_data_file_is_refused_naming_the_store(tiny_lmdb, tmp_path, keep):
    copy = damaged_copy(tiny_lmdb, tmp_path)
    data = copy / "data.mdb"
    size = data.stat().st_size
    os.truncate(data, int(size * keep) if isinstance(keep, float) else keep)
    result = read_all(copy)
    assert result.returncode == 3, (result.returncode, result.stderr[-2000:])
    message = result.stderr.strip()
    assert message.startswith("StoreError: ") and str(copy) in message
    assert "data.mdb is truncated" in message
    assert len(message.splitlines()) == 1


def test_verify_and_train_on_a_truncated_store_report_it(tiny_lmdb, tmp_path):
    copy = damaged_copy(tiny_lmdb, tmp_path)
    os.truncate(copy / "data.mdb", (copy / "data.mdb").stat().st_size // 2)
    bin_dir = Path(sys.executable).parent
    verify = subprocess.run(
        [bin_dir / "fp-build", "verify", copy], capture_output=True, text=True, timeout=120
    )
    assert verify.returncode == 1, verify.stderr[-2000:]
    assert f"{copy}: CORRUPT" in verify.stdout and "data.mdb is truncated" in verify.stdout
    train = subprocess.run(
        [bin_dir / "fp-train", "pretrain", "--store", copy, "--descriptor", "gmpset1"]
        + ["--run-dir", tmp_path / "run", "--epochs", "1", "--num-workers", "0", "--cutoff", "4"]
        + ["--hidden-channels", "8", "--num-layers", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 1, (train.returncode, train.stderr[-2000:])
    assert train.stderr.startswith("fp-train: error:") and "data.mdb is truncated" in train.stderr
    assert "Traceback" not in train.stderr


def test_a_value_size_beyond_the_file_is_refused_before_it_is_read(tiny_lmdb, tmp_path):
    """A leaf node whose 32-bit value size was damaged: liblmdb would hand out a buffer running
    ~2 GB past the end of the file (copying it: SIGBUS)."""
    copy = damaged_copy(tiny_lmdb, tmp_path)
    data = bytearray((copy / "data.mdb").read_bytes())
    # LMDB leaf node (lmdb.h): u16 size low, u16 size high, u16 flags (1 = value in overflow
    # pages), u16 key size, then the key.
    node = b"\x01\x00\x0c\x00g/0000000002"
    hits = [k for k in range(len(data)) if data.startswith(node, k)]
    assert hits
    for k in hits:
        data[k - 2 : k] = b"\x00\x80"  # size high word: + 2 GiB
    (copy / "data.mdb").write_bytes(data)
    result = read_all(copy)
    assert result.returncode == 3, (result.returncode, result.stderr[-2000:])
    assert "data.mdb is damaged" in result.stderr and "runs past the data" in result.stderr


def test_damaged_meta_pages_are_refused(tiny_lmdb, tmp_path):
    copy = damaged_copy(tiny_lmdb, tmp_path)
    data = bytearray((copy / "data.mdb").read_bytes())
    page_size = int.from_bytes(data[40:44], "little")
    data[136 : 136 + 8] = (10**9).to_bytes(8, "little")  # meta 0's last page
    data[page_size + 136 : page_size + 144] = (10**9).to_bytes(8, "little")  # meta 1's
    (copy / "data.mdb").write_bytes(data)
    result = read_all(copy)
    assert result.returncode == 3 and "data.mdb is truncated" in result.stderr
    data[16:20] = b"\0\0\0\0"  # meta 0's magic
    (copy / "data.mdb").write_bytes(data)
    result = read_all(copy)
    assert result.returncode == 3 and "meta page 0 is not an LMDB meta page" in result.stderr


def test_an_intact_store_reads(tiny_lmdb):
    result = read_all(tiny_lmdb)
    assert result.returncode == 0 and result.stdout.strip() == "read 6"
