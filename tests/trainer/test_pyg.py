"""The PyG view of a store: items against the raw records and a plain nearest-K loop, PyG
batching (node offsets, per-graph cells) with edge vectors recomputed from the batch against
a per-edge image sum, errors, and the module's example training a PyG model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fingerprint_pretrain.schemas import StoreError, open_store
from fingerprint_pretrain.trainer.pyg import PygStoreDataset, edge_vectors
from torch_geometric.loader import DataLoader

from tests.builder.helpers import MP_SAMPLE, build

TARGETS = ["band_gap", "formation_energy_per_atom"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("pyg") / "mp.lmdb"
    build(out, MP_SAMPLE, targets=TARGETS, descriptors=["wacsfset2"])
    return out


def kept_edges(rec: dict, k: int, cutoff: float) -> np.ndarray:
    """Indices of the stored edges each centre keeps: its k nearest (0 = all) below the cutoff,
    by a plain loop over centres and the stored distances."""
    edge_index, dist = rec["edge_index"], rec["edge_dist"]
    kept = []
    for i in range(len(rec["z"])):
        mine = [e for e in range(len(dist)) if edge_index[1, e] == i and dist[e] < cutoff]
        mine.sort(key=lambda e: (dist[e], e))
        kept += mine if k == 0 else mine[:k]
    return np.sort(np.array(kept))


@pytest.mark.parametrize("k, cutoff", [(16, None), (0, 5.0)])
def test_items_equal_the_records_with_the_trainers_selection(store, k, cutoff):
    ds = PygStoreDataset(store, ["wacsfset2"], max_neighbors=k, cutoff=cutoff, dtype=torch.float64)
    raw = open_store(store)
    assert len(ds) == len(raw) == 40 and ds.target_names == raw.target_names
    for index in (0, 7, 23):
        rec, item = raw[index], ds[index]
        kept = kept_edges(rec, k, 8.0 if cutoff is None else cutoff)
        assert item.id == rec["id"] and item.num_nodes == len(rec["z"])
        np.testing.assert_array_equal(item.z.numpy(), rec["z"])
        np.testing.assert_array_equal(item.pos.numpy(), rec["pos"])
        np.testing.assert_array_equal(item.cell.numpy(), rec["cell"][None])
        # the same edges in the store's order (grouped by centre, nearest first)
        np.testing.assert_array_equal(item.edge_index.numpy(), rec["edge_index"][:, kept])
        np.testing.assert_array_equal(item.edge_shift.numpy(), rec["edge_shift"][kept])
        np.testing.assert_allclose(item.edge_dist.numpy(), rec["edge_dist"][kept], rtol=1e-6)
        for e, stored in enumerate(kept[:50]):  # per edge: pos[j] + shift @ cell - pos[i]
            j, i = rec["edge_index"][:, stored]
            expected = rec["pos"][j] + rec["edge_shift"][stored] @ rec["cell"] - rec["pos"][i]
            np.testing.assert_allclose(item.edge_vec[e].numpy(), expected, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(item.wacsfset2.numpy(), rec["wacsfset2"])
        np.testing.assert_array_equal(item.y.numpy(), rec["targets"][None])


def test_target_selection_and_float32(store):
    ds = PygStoreDataset(store, targets=["formation_energy_per_atom"])
    item = ds[3]
    rec = open_store(store)[3]
    assert item.y.shape == (1, 1) and item.y.dtype == torch.float32
    assert item.y.item() == pytest.approx(rec["targets"][1], rel=1e-6)
    assert item.pos.dtype == item.edge_vec.dtype == item.cell.dtype == torch.float32
    assert "wacsfset2" not in item  # only the label sets asked for


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_batches_keep_edges_and_recompute_the_stored_vectors(store, dtype, tol):
    ds = PygStoreDataset(store, ["wacsfset2"], max_neighbors=24, dtype=dtype)
    order = [5, 0, 17, 9, 30, 2]
    loader = DataLoader(ds[order], batch_size=3, shuffle=False, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2
    raw = open_store(store)
    for b, batch in enumerate(batches):
        items = [ds[i] for i in order[3 * b : 3 * b + 3]]
        sizes = [it.num_nodes for it in items]
        starts = np.cumsum([0, *sizes])
        assert batch.num_graphs == 3 and batch.cell.shape == (3, 3, 3)
        assert batch.y.shape == (3, len(TARGETS)) and batch.wacsfset2.shape == (sum(sizes), 20)
        assert batch.batch.tolist() == sum(([g] * n for g, n in enumerate(sizes)), [])
        for g, item in enumerate(items):
            mask = batch.batch[batch.edge_index[1]] == g
            # both ends inside graph g's node range, offset by the nodes before it
            local = batch.edge_index[:, mask] - int(starts[g])
            assert torch.equal(local, item.edge_index)
            assert torch.equal(batch.edge_shift[mask], item.edge_shift)
            assert torch.equal(batch.cell[g], item.cell[0])
        # vectors from the batched pos / per-graph cell / shift, edge by edge (the graph of an
        # edge from its centre), against those stored at loading and the raw records
        pos, cell = batch.pos.double().numpy(), batch.cell.double().numpy()
        shift = batch.edge_shift.double().numpy()
        graph = batch.batch.numpy()
        j, i = batch.edge_index.numpy()
        by_loop = np.array(
            [pos[j[e]] + shift[e] @ cell[graph[i[e]]] - pos[i[e]] for e in range(len(i))]
        )
        np.testing.assert_allclose(by_loop, batch.edge_vec.double().numpy(), rtol=0, atol=tol)
        torch.testing.assert_close(edge_vectors(batch), batch.edge_vec, rtol=0, atol=tol)
        rec = raw[order[3 * b]]
        first = batch.edge_vec[batch.batch[batch.edge_index[1]] == 0].double().norm(dim=1)
        np.testing.assert_allclose(
            np.sort(first.numpy()), np.sort(rec["edge_dist"][kept_edges(rec, 24, 8.0)]), atol=1e-5
        )


def test_edge_vectors_of_a_single_item(store):
    item = PygStoreDataset(store, dtype=torch.float64)[11]
    torch.testing.assert_close(edge_vectors(item), item.edge_vec, rtol=0, atol=1e-12)


def test_a_zarr_store_gives_the_same_items(store, tmp_path):
    from fingerprint_pretrain.builder.export import export_zarr

    zarr_path = export_zarr(open_store(store), tmp_path / "mp.zarr", progress=False)
    lmdb_ds = PygStoreDataset(store, ["wacsfset2"], max_neighbors=12)
    zarr_ds = PygStoreDataset(zarr_path, ["wacsfset2"], max_neighbors=12)
    for index in (0, 19, 39):
        a, b = lmdb_ds[index], zarr_ds[index]
        assert a.keys() == b.keys() and a.id == b.id
        for key in a.keys():
            if key != "id":
                assert torch.equal(a[key], b[key]), key


def test_bad_requests_name_the_store(store):
    with pytest.raises(StoreError, match="eadset1.*not in store"):
        PygStoreDataset(store, ["eadset1"])
    with pytest.raises(StoreError, match=r"mp\.lmdb.*band_gaps.*not in store"):
        PygStoreDataset(store, targets=["band_gaps"])
    with pytest.raises(StoreError, match="exceeds the store"):
        PygStoreDataset(store, cutoff=9.0)


def test_module_example_trains_a_pyg_model(store, one_thread):
    """The example of trainer/pyg.py's docstring (the README's): a few steps lower the loss."""
    from fingerprint_pretrain.trainer.backbones import PaiNN

    torch.manual_seed(0)
    ds = PygStoreDataset(store, descriptors=["wacsfset2"], max_neighbors=16)
    stats = ds.manifest["descriptors"]["wacsfset2"]["stats"]
    mean = torch.tensor(stats["mean"], dtype=torch.float32)
    std = torch.tensor(stats["std"], dtype=torch.float32).clamp(min=1e-6)
    loader = DataLoader(ds[:8], batch_size=8, shuffle=True)
    model = PaiNN(hidden_channels=16, num_layers=2, cutoff_upper=ds.cutoff)
    head = torch.nn.Linear(16, ds.descriptor_dims["wacsfset2"])
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-2)
    losses = []
    for _ in range(15):
        for batch in loader:
            x, vec = model(batch.z, batch.edge_index, batch.edge_vec)
            loss = (head(x) - (batch.wacsfset2 - mean) / std).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert vec.shape == (batch.num_nodes, 3, 16)
    assert losses[-1] < 0.5 * losses[0]


def test_the_readme_pyg_example_runs(store, one_thread):
    """The README's PyG block as written, on this module's store (its set is wacsfset2)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "PygStoreDataset" in b
    )
    code = block.replace('"mp.lmdb"', repr(str(store))).replace("wacsfset1", "wacsfset2")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["vec"].shape[1:] == (3, 64) and scope["loss"].item() > 0
