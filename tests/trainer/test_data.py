"""Data pipeline: nearest-K edges against a plain loop, batching offsets, splits (MatBench folds
against scikit-learn), label scaling against NumPy over the stored values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fingerprint_pretrain.schemas import open_store
from fingerprint_pretrain.trainer.data import (
    LabelScaler,
    StoreDataset,
    collate,
    kfold_splits,
    nearest_k,
    random_split,
)

from tests.builder.helpers import MP_SAMPLE, build


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "mp.lmdb"
    build(
        out,
        MP_SAMPLE,
        targets=["band_gap", "formation_energy_per_atom"],
        descriptors=["wacsfset1", "wacsfset2"],
    )
    return out


def test_nearest_k_matches_a_plain_loop(store):
    rec = open_store(store)[5]
    edge_index, dist = rec["edge_index"], rec["edge_dist"].astype(np.float64)
    for k, cutoff in [(32, 8.0), (12, 5.0), (0, 6.0), (1000, 8.0)]:
        keep = nearest_k(edge_index, dist, k, cutoff)
        expected = np.zeros(len(dist), bool)
        for i in range(len(rec["z"])):
            mine = [e for e in range(len(dist)) if edge_index[1, e] == i and dist[e] < cutoff]
            mine.sort(key=lambda e: dist[e])
            expected[mine if k == 0 else mine[:k]] = True
        np.testing.assert_array_equal(keep, expected)


def test_items_and_batches(store):
    ds = StoreDataset(store, "node", ["wacsfset1", "wacsfset2"], max_neighbors=16)
    raw = open_store(store)
    items = [ds[i] for i in (3, 0, 7)]
    for item, i in zip(items, (3, 0, 7)):
        rec = raw[i]
        assert item["y"].shape == (len(rec["z"]), 48 + 20)
        counts = torch.bincount(item["edge_index"][1], minlength=len(rec["z"]))
        assert counts.max() <= 16
        # the kept edges are each centre's 16 nearest: their lengths are the 16 smallest
        # stored distances of that centre
        lengths = item["edge_vec"].double().norm(dim=1).numpy()
        for centre in range(len(rec["z"])):
            stored = np.sort(rec["edge_dist"][rec["edge_index"][1] == centre])[:16]
            got = np.sort(lengths[item["edge_index"][1].numpy() == centre])
            np.testing.assert_allclose(got, stored, rtol=1e-6)
    batch = collate(items)
    sizes = [len(it["z"]) for it in items]
    assert batch.num_graphs == 3 and batch.z.shape[0] == sum(sizes)
    assert batch.batch.tolist() == sum(([g] * n for g, n in enumerate(sizes)), [])
    # edges of structure g point into its own node range
    offsets = np.cumsum([0, *sizes])
    for g, item in enumerate(items):
        mask = batch.batch[batch.edge_index[1]] == g
        assert torch.equal(batch.edge_index[:, mask] - int(offsets[g]), item["edge_index"])


def test_edge_vectors_against_an_independent_image_sum(store):
    from tests.builder.test_neighbors import brute_force

    ds = StoreDataset(store, "graph", ["band_gap"], max_neighbors=0)
    rec = open_store(store)[11]
    item = ds[11]
    reference = brute_force(rec["pos"], rec["cell"], [True] * 3, 8.0)
    got = sorted(item["edge_vec"].double().norm(dim=1).tolist())
    np.testing.assert_allclose(got, sorted(reference.values()), atol=1e-5)


def test_random_split_is_a_partition_and_reproducible():
    parts = random_split(101, [0.6, 0.2, 0.2], seed=111)
    assert sorted(np.concatenate(parts).tolist()) == list(range(101))
    assert [len(p) for p in parts] == [60, 20, 21]
    again = random_split(101, [0.6, 0.2, 0.2], seed=111)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = random_split(101, [0.6, 0.2, 0.2], seed=222)
    assert not np.array_equal(parts[0], other[0])
    with pytest.raises(ValueError, match="sum to 1"):
        random_split(10, [0.5, 0.2], 1)


def test_matbench_folds_equal_scikit_learn():
    sklearn = pytest.importorskip("sklearn.model_selection")
    for n in (636, 1265, 17):
        ours = kfold_splits(n)
        theirs = list(
            sklearn.KFold(n_splits=5, shuffle=True, random_state=18012019).split(np.zeros(n))
        )
        for (tr, te), (tr2, te2) in zip(ours, theirs):
            np.testing.assert_array_equal(tr, np.sort(tr2))
            np.testing.assert_array_equal(te, np.sort(te2))
        tests = np.concatenate([te for _, te in ours])
        assert sorted(tests.tolist()) == list(range(n))  # disjoint and covering


def test_label_scaling_from_manifest_matches_numpy(store):
    raw = open_store(store)
    values = np.concatenate([r["wacsfset1"] for r in raw]).astype(np.float64)
    stats = raw.manifest["descriptors"]["wacsfset1"]["stats"]
    per = LabelScaler.from_stats(stats, "per_feature")
    scaled = per.transform(values)
    np.testing.assert_allclose(scaled.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(scaled.std(axis=0)[values.std(axis=0) > 0], 1, rtol=1e-6)
    glob = LabelScaler.from_stats(stats, "global")
    g = glob.transform(values)
    assert g.mean() == pytest.approx(0, abs=1e-9) and g.std() == pytest.approx(1, rel=1e-6)
    none = LabelScaler.from_stats(stats, "none")
    np.testing.assert_array_equal(none.transform(values), values)
    y = torch.tensor(scaled[:5])
    np.testing.assert_allclose(per.inverse(y).numpy(), values[:5], rtol=1e-9)


def test_fit_scaler_ignores_missing_targets():
    y = np.array([[1.0], [3.0], [np.nan]])
    s = LabelScaler.fit(y)
    assert s.shift[0] == pytest.approx(2.0) and s.scale[0] == pytest.approx(1.0)


def test_epoch_sampler_shards_cover_each_split_once():
    from fingerprint_pretrain.trainer.evaluation import EpochSampler

    indices = np.arange(10, 21)  # 11 indices, 2 ranks
    # evaluation: disjoint shards covering every index exactly once
    shards = [list(EpochSampler(indices, 0, False, r, 2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(10, 21))
    assert len(EpochSampler(indices, 0, False, 1, 2)) == 5
    # training: equal step counts (one index repeated), a new order each epoch
    train = [EpochSampler(indices, 7, True, r, 2) for r in range(2)]
    first = [list(t) for t in train]
    assert len(first[0]) == len(first[1]) == 6
    assert set(first[0]) | set(first[1]) == set(range(10, 21))
    for t in train:
        t.set_epoch(1)
    assert [list(t) for t in train] != first


def test_transform_float32_is_the_float64_formula_rounded_once():
    rng = np.random.default_rng(2)
    a = (rng.normal(size=(7, 5)) * 1e4).astype(np.float32)
    b = (rng.normal(size=(7, 3)) * 1e-3).astype(np.float16)
    scaler = LabelScaler(rng.normal(size=8) * 100, rng.uniform(1e-9, 1e3, size=8))
    # the reference: float64 of the stored values side by side, (y - shift) / scale, float32
    y = np.hstack([a.astype(np.float64), b.astype(np.float64)])
    expected = ((y - scaler.shift) / scaler.scale).astype(np.float32)
    got = scaler.transform_float32([a, b])
    assert (
        got.dtype == np.float32
        and got.view(np.uint32).tolist() == expected.view(np.uint32).tolist()
    )
    one = LabelScaler(scaler.shift[:5], scaler.scale[:5]).transform_float32([a])
    np.testing.assert_array_equal(one, expected[:, :5])


def reference_batch(items):
    """The batch written out with torch.cat, one tensor at a time."""
    sizes = [len(it["z"]) for it in items]
    offsets = np.cumsum([0, *sizes])[:-1]
    return {
        "z": torch.cat([it["z"] for it in items]),
        "edge_index": torch.cat([it["edge_index"] + int(o) for it, o in zip(items, offsets)], 1),
        "edge_vec": torch.cat([it["edge_vec"] for it in items]),
        "batch": torch.cat([torch.full((n,), g) for g, n in enumerate(sizes)]),
        "y": torch.cat([it["y"] for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
    }


def in_shared_memory(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s bytes lie in a mapping of a torch shared-memory segment (the
    worker's buffer, mapped by this process; from /proc/self/maps)."""
    start = tensor.data_ptr()
    with open("/proc/self/maps") as fh:
        for line in fh:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= start < hi:
                return "/torch_" in line
    return False


def test_batches_travel_from_workers_as_one_shared_buffer(store):
    """A worker's batch is one shared-memory buffer that every tensor views (one segment to
    hand over, not six) and holds exactly the items, also after pickling."""
    import dataclasses
    import pickle

    from torch.utils.data import DataLoader

    ds = StoreDataset(store, "node", ["wacsfset1", "wacsfset2"], max_neighbors=8)
    loader = DataLoader(ds, batch_size=5, collate_fn=collate, num_workers=1)
    for b, batch in enumerate(loader):
        expected = reference_batch([ds[i] for i in range(5 * b, min(5 * b + 5, len(ds)))])
        storages = set()
        for name, want in expected.items():
            got = getattr(batch, name)
            assert got.dtype == want.dtype and torch.equal(got, want), name
            storages.add(got.untyped_storage().data_ptr())
        assert len(storages) == 1 and in_shared_memory(batch.buffer)
        if b == 0:
            again = pickle.loads(pickle.dumps(batch))
            for name, want in expected.items():
                assert torch.equal(getattr(again, name), want), name
            assert again.num_graphs == batch.num_graphs
            plain = dataclasses.replace(batch, buffer=None)  # e.g. after .to() or pinning
            moved = pickle.loads(pickle.dumps(plain))
            assert moved.buffer is None and torch.equal(moved.y, expected["y"])
    # an empty-edge structure and a batch of one
    item = dict(ds[0], edge_index=torch.zeros((2, 0), dtype=torch.int64))
    item["edge_vec"] = torch.zeros((0, 3))
    single = collate([item])
    assert single.edge_index.shape == (2, 0) and torch.equal(single.y, item["y"])
