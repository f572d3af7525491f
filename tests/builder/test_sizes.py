"""fingerprint_pretrain.builder.sizes: byte counts for people and allocated sizes of stores."""

from __future__ import annotations

import pytest
from fingerprint_pretrain.builder.sizes import disk_bytes, human_bytes


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 2**20, "5.0 MiB"),
        (3.25 * 2**30, "3.2 GiB"),  # 3.25 rounds half to even
        (2 * 2**40, "2.0 TiB"),
        (3 * 2**50, "3072.0 TiB"),  # TiB is the largest unit
    ],
)
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def test_disk_bytes_counts_allocated_blocks_of_a_file_and_a_folder(tmp_path):
    dense = tmp_path / "store" / "data.mdb"
    dense.parent.mkdir()
    dense.write_bytes(b"\1" * 65536)
    sparse = tmp_path / "store" / "sub" / "lock.mdb"
    sparse.parent.mkdir()
    with sparse.open("wb") as f:  # 64 MiB apparent, nothing written: (almost) no blocks
        f.truncate(64 * 2**20)
    assert disk_bytes(dense) >= 65536
    assert disk_bytes(sparse) < 2**20
    whole = disk_bytes(tmp_path / "store")
    assert whole == disk_bytes(dense) + disk_bytes(sparse)
    assert whole < 2 * 2**20
