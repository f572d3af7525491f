"""A PyTorch Geometric view of a store: ``Data`` items any PyG model, loader or transform takes.

Reads the store through :mod:`schemas` only, opened lazily in each DataLoader worker (as
:class:`trainer.data.StoreDataset`, which checks the label sets and the cutoff here), with the
trainer's edge selection (:func:`trainer.data.nearest_k`: distance < cutoff, then each centre's
nearest K). Periodic images stay explicit: every edge carries its integer image shift, and the
cell is stored per graph as (1, 3, 3), so after PyG batching ``batch.cell`` is (B, 3, 3) and
:func:`edge_vectors` recomputes the edge vectors of a whole batch from ``pos``, ``cell`` and
``edge_shift`` (e.g. to differentiate with respect to positions or cell).

Example (pre-training a PyG model on per-atom descriptor labels)::

    import torch
    from torch_geometric.loader import DataLoader
    from fingerprint_pretrain.trainer.backbones import PaiNN
    from fingerprint_pretrain.trainer.pyg import PygStoreDataset

    ds = PygStoreDataset("mp.lmdb", descriptors=["wacsfset1"], max_neighbors=32)
    stats = ds.manifest["descriptors"]["wacsfset1"]["stats"]  # per-feature, over the store
    mean = torch.tensor(stats["mean"], dtype=torch.float32)
    std = torch.tensor(stats["std"], dtype=torch.float32).clamp(min=1e-6)
    loader = DataLoader(ds, batch_size=8, shuffle=True)
    model = PaiNN(hidden_channels=64, num_layers=2, cutoff_upper=ds.cutoff)
    head = torch.nn.Linear(64, ds.descriptor_dims["wacsfset1"])
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-3)
    for batch in loader:
        x, vec = model(batch.z, batch.edge_index, batch.edge_vec)
        loss = (head(x) - (batch.wacsfset1 - mean) / std).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from fingerprint_pretrain.schemas import StoreError
from fingerprint_pretrain.schemas.record import edge_vectors as record_edge_vectors
from fingerprint_pretrain.trainer.data import StoreDataset, nearest_k
from torch import Tensor
from torch_geometric.data import Data, Dataset

__all__ = ["PygStoreDataset", "edge_vectors"]


class PygStoreDataset(Dataset):
    """One store as PyG ``Data`` objects.

    Args:
        path: store directory (LMDB or Zarr).
        descriptors: per-atom label sets to include, each as an attribute of its own name.
        targets: structure targets to put in ``y``, in this order; ``None`` = all of the store's.
        max_neighbors: keep each atom's nearest K edges (0 = all within the cutoff).
        cutoff: drop edges at or beyond this distance, Å (default and maximum: the store's).
        dtype: floating dtype of positions, cell, shifts, vectors, distances and labels.
        transform: PyG transform applied to each item on access.

    Items (N atoms, E kept edges, T targets)::

        z           (N,)      int64   atomic numbers
        pos         (N, 3)    dtype   Cartesian positions, Å
        cell        (1, 3, 3) dtype   lattice vectors as rows, Å (batches to (B, 3, 3))
        edge_index  (2, E)    int64   row 0 = neighbour j, row 1 = centre i
        edge_shift  (E, 3)    dtype   integer image offsets: vec = pos[j] + shift @ cell - pos[i]
        edge_vec    (E, 3)    dtype   that vector, Å (computed in float64, then cast)
        edge_dist   (E,)      dtype   its length, Å
        <set>       (N, d)    dtype   each label set of ``descriptors``, unscaled
        y           (1, T)    dtype   targets, unscaled, NaN where missing (batches to (B, T))
        id          str               structure identifier

    Raises:
        StoreError: unknown descriptor set or target, or a cutoff beyond the store's.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        descriptors: Sequence[str] = (),
        targets: Sequence[str] | None = None,
        max_neighbors: int = 32,
        cutoff: float | None = None,
        dtype: torch.dtype = torch.float32,
        transform: Callable[[Data], Data] | None = None,
    ):
        # the trainer's dataset checks descriptor sets and cutoff and opens the store per worker
        self._graphs = StoreDataset(path, "node", list(descriptors), max_neighbors, cutoff)
        super().__init__(root=None, transform=transform, log=False)
        store = self._graphs.store
        self.descriptors = list(descriptors)
        self.descriptor_dims = {n: store.manifest["descriptors"][n]["dim"] for n in descriptors}
        self.target_names = store.target_names if targets is None else list(targets)
        missing = [n for n in self.target_names if n not in store.target_names]
        if missing:
            raise StoreError(
                f"{path}: target(s) {missing} not in store (targets: {store.target_names})"
            )
        self._target_cols = [store.target_names.index(n) for n in self.target_names]
        self.dtype = dtype

    @property
    def manifest(self) -> dict:
        """The store's manifest (label statistics, units, cutoff, hashes)."""
        return self._graphs.store.manifest

    @property
    def cutoff(self) -> float:
        """The edge cutoff in use, Å."""
        return self._graphs.cutoff

    @property
    def max_neighbors(self) -> int:
        return self._graphs.max_neighbors

    def len(self) -> int:
        return len(self._graphs)

    def get(self, idx: int) -> Data:
        rec = self._graphs.store.get(idx, descriptors=self.descriptors)
        edge_index = np.asarray(rec["edge_index"], dtype=np.int64)
        shift = np.asarray(rec["edge_shift"], dtype=np.float64)
        # float64 vectors and the trainer's selection on their lengths (as StoreDataset does)
        vec = record_edge_vectors(rec["pos"], rec["cell"], edge_index, shift)
        dist = np.sqrt(np.einsum("ij,ij->i", vec, vec))
        keep = nearest_k(edge_index, dist, self.max_neighbors, self.cutoff)
        as_float = lambda a: torch.tensor(np.asarray(a, np.float64), dtype=self.dtype)  # noqa: E731
        labels = {name: as_float(rec[name]) for name in self.descriptors}
        targets = np.asarray(rec["targets"], dtype=np.float64)[self._target_cols]
        return Data(
            z=torch.from_numpy(np.asarray(rec["z"], dtype=np.int64)),
            pos=as_float(rec["pos"]),
            cell=as_float(rec["cell"]).unsqueeze(0),
            edge_index=torch.from_numpy(edge_index[:, keep]),
            edge_shift=as_float(shift[keep]),
            edge_vec=as_float(vec[keep]),
            edge_dist=as_float(dist[keep]),
            y=as_float(targets).unsqueeze(0),
            id=rec["id"],
            **labels,
        )


def edge_vectors(data: Data) -> Tensor:
    """(E, 3) edge vectors pos[j] + shift @ cell_g − pos[i] of a ``Data`` item or of a PyG
    batch of them (cell_g: the cell of the edge's own graph, from ``batch.cell`` (B, 3, 3))."""
    j, i = data.edge_index
    batch = data.batch
    cell = data.cell[0].expand(len(j), 3, 3) if batch is None else data.cell[batch[i]]
    return data.pos[j] + torch.einsum("ek,ekl->el", data.edge_shift, cell) - data.pos[i]
