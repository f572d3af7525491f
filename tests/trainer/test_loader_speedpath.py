"""The batched DataLoader path (``StoreDataset.__getitems__``, reused shared-memory buffers):
every batch bitwise equal to a slow per-structure reference built from the raw records with
``schemas`` alone, in the main process and in workers that reuse their buffers; buffers handed
back only when the main process has freed a batch; nothing left in shared memory when the
loader ends or a worker dies (issue 21, goal 6)."""

from __future__ import annotations

import gc
import os
import signal
import time

import numpy as np
import pytest
import torch
from fingerprint_pretrain.schemas import open_store
from fingerprint_pretrain.schemas.record import edge_vectors
from fingerprint_pretrain.trainer import data as data_module
from fingerprint_pretrain.trainer.data import (
    BatchItems,
    LabelScaler,
    StoreDataset,
    collate,
    release_worker_buffers,
)
from fingerprint_pretrain.trainer.evaluation import EpochSampler
from torch.utils.data import DataLoader


def reference_item(rec: dict, k: int, cutoff: float, y64: np.ndarray) -> dict:
    """One structure the obvious way: the schemas formula for edge vectors, then a plain loop
    keeping, per centre in the store's order, the first ``k`` edges shorter than ``cutoff``."""
    edge_index = np.asarray(rec["edge_index"], np.int64)
    vec = edge_vectors(rec["pos"], rec["cell"], edge_index, rec["edge_shift"])
    dist = np.linalg.norm(vec, axis=1)
    seen: dict[int, int] = {}
    keep = []
    for e in range(edge_index.shape[1]):
        centre = int(edge_index[1, e])
        if dist[e] < cutoff and (k == 0 or seen.get(centre, 0) < k):
            seen[centre] = seen.get(centre, 0) + 1
            keep.append(e)
    return {
        "z": np.asarray(rec["z"], np.int64),
        "edge_index": edge_index[:, keep],
        "edge_vec": vec[keep].astype(np.float32),
        "y": y64.astype(np.float32),
    }


def reference_batch(path, task, labels, k, cutoff, shift, scale, indices) -> dict:
    """The batch of ``indices``: per-structure references side by side, node indices offset,
    labels (value - shift) / scale in float64 rounded once to float32."""
    store = open_store(path, descriptors=labels if task == "node" else [])
    items = []
    for i in indices:
        rec = store.get(int(i))
        if task == "node":
            raw = np.hstack([np.asarray(rec[n], np.float64) for n in labels])
        else:
            cols = [store.target_names.index(n) for n in labels]
            raw = np.asarray(rec["targets"], np.float64)[cols][None, :]
        items.append(reference_item(rec, k, cutoff, (raw - shift) / scale))
    offsets = np.cumsum([0] + [len(it["z"]) for it in items])
    return {
        "z": np.concatenate([it["z"] for it in items]),
        "edge_index": np.concatenate(
            [it["edge_index"] + o for it, o in zip(items, offsets)], axis=1
        ),
        "edge_vec": np.concatenate([it["edge_vec"] for it in items]),
        "batch": np.concatenate([np.full(len(it["z"]), g) for g, it in enumerate(items)]),
        "y": np.concatenate([it["y"] for it in items]),
        "index": np.asarray(indices, np.int64),
    }


def assert_bitwise(batch, expected: dict) -> None:
    for name, want in expected.items():
        got = getattr(batch, name).numpy()
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name


def manifest_scaling(path, labels, mode):
    """(shift, scale) from the manifest's per-feature statistics, written out here: per
    feature, pooled over all features (E[x], E[x^2] of the union of the columns), or none."""
    stats = open_store(path).manifest["descriptors"]
    mean = np.concatenate([np.asarray(stats[n]["stats"]["mean"], np.float64) for n in labels])
    std = np.concatenate([np.asarray(stats[n]["stats"]["std"], np.float64) for n in labels])
    if mode == "none":
        return np.zeros_like(mean), np.ones_like(std)
    if mode == "global":
        pooled = np.sqrt(max((std**2 + mean**2).mean() - mean.mean() ** 2, 0.0))
        mean, std = np.full_like(mean, mean.mean()), np.full_like(std, pooled)
    return mean, np.where(std > 0, std, 1.0)


def dataset(path, task, labels, k, cutoff, mode):
    ds = StoreDataset(path, task, labels, max_neighbors=k, cutoff=cutoff)
    if task == "node":
        stats = ds.store.manifest["descriptors"][labels[0]]["stats"]
        ds.scaler = LabelScaler.from_stats(stats, mode)
        shift, scale = manifest_scaling(path, labels, mode)
    else:
        ds.scaler = LabelScaler.fit(ds.targets(), mode)
        shift, scale = ds.scaler.shift, ds.scaler.scale
    return ds, shift, scale


@pytest.mark.parametrize(
    "task, labels, k, cutoff, mode",
    [
        ("node", ["wacsfset1"], 32, None, "per_feature"),  # the trainer's defaults
        ("node", ["wacsfset1"], 5, 4.0, "global"),  # cutoff below the store's, small K
        ("node", ["wacsfset1"], 0, 6.0, "none"),  # every edge under the cutoff
        ("graph", ["band_gap"], 32, None, "per_feature"),
    ],
)
def test_main_process_batches_match_the_reference(tiny_store, task, labels, k, cutoff, mode):
    ds, shift, scale = dataset(tiny_store, task, labels, k, cutoff, mode)
    cut = ds.cutoff
    order = np.random.default_rng(1).permutation(len(ds))
    loader = DataLoader(ds, batch_size=7, collate_fn=collate, sampler=order.tolist())
    seen = 0
    for b, batch in enumerate(loader):
        indices = order[7 * b : 7 * b + 7]
        assert_bitwise(
            batch, reference_batch(tiny_store, task, labels, k, cut, shift, scale, indices)
        )
        seen += batch.num_graphs
    assert seen == len(ds)


def test_items_of_a_batch_are_the_dataset_items(tiny_store):
    """Other collate functions and wrapper datasets get the same items as ``ds[i]``."""
    ds, _, _ = dataset(tiny_store, "node", ["wacsfset1"], 8, None, "per_feature")
    items = ds.__getitems__([5, 2, 9])
    assert isinstance(items, BatchItems) and len(items) == 3
    for got, i in zip(items, (5, 2, 9)):
        want = ds[i]
        assert got.keys() == want.keys() and got["index"] == i
        for key in ("z", "edge_index", "edge_vec", "y"):
            assert torch.equal(got[key], want[key]), key
    subset = torch.utils.data.Subset(ds, [9, 5])
    batch = next(iter(DataLoader(subset, batch_size=2, collate_fn=collate)))
    assert batch.index.tolist() == [9, 5]


def _shm_names() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("torch_")}


def _mapped_torch_segments() -> int:
    """Shared-memory segments of torch this process maps (from /proc/self/maps)."""
    with open("/proc/self/maps") as fh:
        return len({line.split()[-2] for line in fh if "/torch_" in line and "(deleted)" in line})


def test_workers_reuse_buffers_and_batches_stay_intact(tiny_store):
    """Two persistent workers, batches of 2 (10 per worker and epoch, more than a pool's
    buffers): three epochs, the first held in full until its end (so workers must fall back to
    fresh segments rather than overwrite a held batch), the others freed as they go (so buffers
    come back and are reused). Every batch equals the reference when it is checked."""
    ds, shift, scale = dataset(tiny_store, "node", ["wacsfset1"], 32, None, "per_feature")
    before = _shm_names()
    sampler = EpochSampler(np.arange(len(ds)), 3, True, 0, 1)
    loader = DataLoader(
        ds, batch_size=2, sampler=sampler, collate_fn=collate, num_workers=2,
        persistent_workers=True, prefetch_factor=4,
    )  # fmt: skip
    ptrs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(iter(sampler))
        held = []
        for b, batch in enumerate(loader):
            indices = order[2 * b : 2 * b + 2]
            expected = reference_batch(tiny_store, "node", ["wacsfset1"], 32, ds.cutoff, shift,
                                       scale, indices)  # fmt: skip
            assert batch.lease is None and batch.buffer is not None
            ptrs.append(batch.buffer.data_ptr())
            if epoch == 0:
                held.append((batch, expected))
            else:
                assert_bitwise(batch, expected)
            del batch
        for batch, expected in held:  # nothing overwrote a batch the loop still held
            assert_bitwise(batch, expected)
        del held
    pools = data_module._MAPPED
    assert len(pools) == 2 and all(
        len(p["slots"]) <= data_module.POOL_SLOTS for p in pools.values()
    )
    assert len(set(ptrs[20:])) <= 2 * data_module.POOL_SLOTS < 40  # buffers were reused
    workers = [w.pid for w in loader._iterator._workers]
    del loader
    gc.collect()
    for pid in workers:  # the workers exit with the loader
        _wait_gone(pid)
    assert release_worker_buffers() == 2 and not data_module._MAPPED
    gc.collect()
    assert _mapped_torch_segments() == 0  # the main process maps none of them any more
    assert _shm_names() <= before  # and nothing was left behind in /dev/shm


def _wait_gone(pid: int) -> None:
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} still running")


def test_a_dead_worker_leaves_nothing_behind(tiny_store):
    ds, _, _ = dataset(tiny_store, "node", ["wacsfset1"], 32, None, "per_feature")
    before = _shm_names()
    loader = DataLoader(ds, batch_size=2, collate_fn=collate, num_workers=2, prefetch_factor=2)
    it = iter(loader)
    next(it)
    next(it)
    victim = it._workers[0].pid
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="killed|exited unexpectedly"):
        for batch in it:
            del batch  # hold nothing: the batches already received are freed
    del it, loader
    gc.collect()
    _wait_gone(victim)
    release_worker_buffers()
    assert not data_module._MAPPED
    gc.collect()
    assert _mapped_torch_segments() == 0 and _shm_names() <= before
