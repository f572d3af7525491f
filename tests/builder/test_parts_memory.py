"""Splitting a build's working environment into parts holds a bounded number of value bytes at
once, whatever the records' sizes (issue 21 goal 5: build memory flat in the number of
structures), and the bound does not change the part's pages."""

from __future__ import annotations

from pathlib import Path

import lmdb
from fingerprint_pretrain.builder import parts
from fingerprint_pretrain.builder.parts import file_sha256, write_part

VALUE = 1 << 20  # 1 MiB records (a 500-atom graph is about this size)


def _source(path: Path, n: int) -> lmdb.Environment:
    env = lmdb.open(str(path), map_size=1 << 30, subdir=True)
    with env.begin(write=True) as txn:
        for k in range(n):
            txn.put(b"g/%08d" % k, bytes([k % 251]) * VALUE)
        txn.put(b"m/sizes", b"x" * 100)
        txn.put(b"z/other", b"not copied")
    return env


def test_copy_holds_at_most_the_byte_bound_and_writes_the_same_part(tmp_path, monkeypatch):
    env = _source(tmp_path / "src", 48)  # 48 MiB of graph values: more than the bound
    held = []
    put_all = parts._put_all

    def recording(target, items):
        held.append(sum(len(v) for _, v in items))
        put_all(target, items)

    monkeypatch.setattr(parts, "_put_all", recording)
    with env.begin() as txn:
        entry = write_part(txn, parts.GRAPH_PREFIXES, tmp_path / "graphs.mdb")
    assert sum(held) == 48 * VALUE + 100
    assert max(held) <= parts._BATCH_BYTES + VALUE  # the old code held all 48 MiB at once
    # reference: every key in one transaction (the bound lifted) gives the same bytes
    monkeypatch.setattr(parts, "_put_all", put_all)
    monkeypatch.setattr(parts, "_BATCH_BYTES", 1 << 40)
    monkeypatch.setattr(parts, "_BATCH", 1 << 40)
    with env.begin() as txn:
        reference = write_part(txn, parts.GRAPH_PREFIXES, tmp_path / "reference.mdb")
    assert entry["bytes"] == reference["bytes"]
    # every data page identical; only the two meta pages' transaction id differs (the work
    # copy took more transactions), so the part's sha256 differs from the one-transaction copy
    ours = (tmp_path / "graphs.mdb").read_bytes()
    theirs = (tmp_path / "reference.mdb").read_bytes()
    page = env.stat()["psize"]
    assert ours[2 * page :] == theirs[2 * page :]
    differing = {i // page for i in range(2 * page) if ours[i] != theirs[i]}
    assert differing <= {0, 1}
    assert file_sha256(tmp_path / "graphs.mdb") == entry["sha256"]
    out = lmdb.open(str(tmp_path / "graphs.mdb"), subdir=False, readonly=True, lock=False)
    with out.begin() as txn:
        assert txn.stat()["entries"] == 49
        assert txn.get(b"g/00000047") == bytes([47]) * VALUE
    out.close()
    env.close()
