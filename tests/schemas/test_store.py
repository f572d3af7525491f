"""The reader API: indexing, iteration, descriptor selection, and safety in DataLoader workers
(forked after the parent has read, and spawned)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fingerprint_pretrain.schemas import StoreError, open_store
from torch.utils.data import DataLoader, Dataset

from tests.builder.helpers import MP_SAMPLE, build


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "mp.lmdb"
    build(out, MP_SAMPLE, targets=["band_gap"])
    return out


def test_len_index_iterate(store_path):
    store = open_store(store_path)
    assert len(store) == 40
    records = list(store)
    assert [r["id"] for r in records] == [store[i]["id"] for i in range(40)]
    assert store[-1]["id"] == records[-1]["id"]
    with pytest.raises(IndexError):
        store[40]
    assert "LmdbStore" in repr(store) and "records=40" in repr(store)


def test_unknown_descriptor_set_is_refused(store_path):
    with pytest.raises(StoreError, match=r"descriptor set\(s\) \['eadset1'\] not in store"):
        open_store(store_path, descriptors=["eadset1"])


class Ids(Dataset):
    def __init__(self, store):
        self.store = store

    def __len__(self):
        return len(self.store)

    def __getitem__(self, i):
        rec = self.store[i]
        return i, float(rec["pos"].sum()), len(rec["z"])


def _collect(loader):
    out = {}
    for idx, pos_sum, n in loader:
        for a, b, c in zip(idx.tolist(), pos_sum.tolist(), n.tolist()):
            out[a] = (b, c)
    return out


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_safe_in_dataloader_workers(store_path, context):
    store = open_store(store_path)
    # The parent reads first: its LMDB handle must not leak into (fork) or break the workers.
    expected = {i: (float(store[i]["pos"].sum()), len(store[i]["z"])) for i in range(len(store))}
    loader = DataLoader(
        Ids(store),
        batch_size=4,
        shuffle=True,
        num_workers=2,
        multiprocessing_context=context,
        generator=torch.Generator().manual_seed(0),
    )
    for _epoch in range(2):  # second epoch: fresh workers again
        got = _collect(loader)
        assert got.keys() == expected.keys()
        for i, (pos_sum, n) in expected.items():
            assert got[i][1] == n
            np.testing.assert_allclose(got[i][0], pos_sum)
    # and the parent still reads after the workers are gone
    assert store[3]["id"] == open_store(store_path)[3]["id"]


def test_two_store_objects_on_one_path_share_the_process_handle(store_path):
    a, b = open_store(store_path), open_store(store_path)
    assert a[0]["id"] == b[0]["id"]
