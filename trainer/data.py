"""Stores -> model batches: nearest-K edges, edge vectors, labels and their scaling, splits.

Reads stores through :mod:`schemas` only. A :class:`StoreDataset` opens its store lazily in
each DataLoader worker (the LMDB reader does), reads one record per item and never holds the
store in memory, so a store larger than RAM trains.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from fingerprint_pretrain.schemas import Store, StoreError, open_store
from fingerprint_pretrain.schemas.record import edge_vectors
from fingerprint_pretrain.schemas.splits import (
    kfold_splits,
    random_split,
)  # re-exported: fingerprint_pretrain.trainer.data API
from fingerprint_pretrain.trainer.errors import TrainingError

__all__ = [
    "Batch",
    "BatchItems",
    "LabelScaler",
    "StoreDataset",
    "StoreSurvey",
    "collate",
    "kfold_splits",
    "nearest_k",
    "random_split",
    "release_worker_buffers",
]


def nearest_k(edge_index: np.ndarray, dist: np.ndarray, k: int, cutoff: float) -> np.ndarray:
    """Boolean mask of the edges kept: distance < cutoff and among each centre's k nearest.

    Relies on the store's order (edges grouped by centre, nearest first). ``k = 0`` keeps all.
    """
    keep = dist < cutoff
    if k <= 0:
        return keep
    # rank of each edge within its centre among the edges that pass the cutoff: its position
    # minus that of the first edge of its run of equal centres
    kept = np.flatnonzero(keep)
    kept_centre = edge_index[1][kept]
    first = np.empty(len(kept), bool)
    first[:1] = True
    np.not_equal(kept_centre[1:], kept_centre[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    rank = np.arange(len(kept)) - starts[np.cumsum(first) - 1]
    out = np.zeros_like(keep)
    out[kept[rank < k]] = True
    return out


@dataclass
class LabelScaler:
    """Affine label scaling y' = (y − shift) / scale, per feature.

    Built from the store manifest's per-feature statistics (``per_feature``: each feature its own
    mean and std; ``global``: one mean and std over all features, as the authors scaled GMP) or
    fitted on training targets; ``none`` is the identity. Features with zero spread get scale 1.
    """

    shift: np.ndarray
    scale: np.ndarray
    mode: str = "per_feature"

    @classmethod
    def identity(cls, dim: int) -> LabelScaler:
        return cls(np.zeros(dim), np.ones(dim), "none")

    @classmethod
    def from_stats(cls, stats: dict, mode: str) -> LabelScaler:
        mean = np.asarray(stats["mean"], dtype=np.float64)
        std = np.asarray(stats["std"], dtype=np.float64)
        if mode == "none":
            return cls.identity(len(mean))
        if mode == "global":
            # pooled over features: E[x] and E[x²] of the union of all feature columns
            g_mean = mean.mean()
            g_var = (std**2 + mean**2).mean() - g_mean**2
            mean = np.full_like(mean, g_mean)
            std = np.full_like(std, np.sqrt(max(g_var, 0.0)))
        elif mode != "per_feature":
            raise ValueError(f"unknown scaling {mode!r}: per_feature, global or none")
        return cls(mean, np.where(std > 0, std, 1.0), mode)

    @classmethod
    def fit(cls, values: np.ndarray, mode: str = "per_feature") -> LabelScaler:
        """Fit on (n, d) values (e.g. the training split's targets), ignoring NaN."""
        values = np.asarray(values, dtype=np.float64)
        stats = {"mean": np.nanmean(values, axis=0), "std": np.nanstd(values, axis=0)}
        return cls.from_stats(stats, mode)

    def transform(self, y: np.ndarray) -> np.ndarray:
        return (y - self.shift) / self.scale

    def transform_float32(self, blocks: Sequence[np.ndarray]) -> np.ndarray:
        """The scaled labels of feature blocks side by side, as float32: the same values as
        ``transform(np.concatenate(blocks, axis=1) as float64).astype(float32)``, without
        the intermediate copies (what a DataLoader worker does for every structure).

        Args:
            blocks: (N, d_k) arrays of any float dtype, sum of d_k = len(shift).

        Returns:
            (N, D) float32.
        """
        rows = len(blocks[0])
        if len(blocks) == 1:  # the usual case: one label set, no concatenation
            scaled = np.subtract(blocks[0], self.shift, dtype=np.float64)
        else:
            scaled = np.empty((rows, len(self.shift)), np.float64)
            first = 0
            for block in blocks:
                width = block.shape[1]
                cols = slice(first, first + width)
                np.subtract(block, self.shift[cols], out=scaled[:, cols])
                first += width
        scaled /= self.scale
        return scaled.astype(np.float32)

    def scale_into(self, records: Sequence[dict], names: Sequence[str], out: np.ndarray) -> None:
        """Write the scaled labels of ``records`` (their sets ``names`` side by side, records
        one after another) into ``out``: bitwise what :meth:`transform_float32` gives per
        record, without its per-record float64 and float32 arrays (the float64 differences go
        through one reused scratch buffer; the division casts straight into ``out``).

        Args:
            records: dicts holding each set of ``names`` as (N_r, d_k) arrays of any float dtype.
            names: label sets, sum of d_k = len(shift).
            out: (sum of N_r, D) float32, written in place.
        """
        width = len(self.shift)
        row = 0
        for rec in records:
            rows = len(rec[names[0]])
            scratch = _scratch(rows * width).reshape(rows, width)
            first = 0
            for name in names:
                block = rec[name]
                cols = slice(first, first + block.shape[1])
                np.subtract(block, self.shift[cols], out=scratch[:, cols])
                first += block.shape[1]
            np.divide(scratch, self.scale, out=out[row : row + rows])
            row += rows

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.as_tensor(self.scale, dtype=y.dtype, device=y.device) + torch.as_tensor(
            self.shift, dtype=y.dtype, device=y.device
        )

    def to_dict(self) -> dict:
        return {"shift": self.shift.tolist(), "scale": self.scale.tolist(), "mode": self.mode}

    @classmethod
    def from_dict(cls, d: dict) -> LabelScaler:
        return cls(np.asarray(d["shift"]), np.asarray(d["scale"]), d["mode"])


_SCRATCH = threading.local()


def _scratch(size: int) -> np.ndarray:
    """A float64 work array of ``size`` elements, reused by this thread (its pages stay
    mapped: a fresh one of EAD set 2's size costs page faults on every structure)."""
    held = getattr(_SCRATCH, "array", None)
    if held is None or held.size < size:
        held = _SCRATCH.array = np.empty(max(size, 1), np.float64)
    return held[:size]


# symbols of the elements at and beyond the embedding's end (Z = 100, ...), for messages
_SYMBOLS = dict(
    enumerate(
        "Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og".split(),
        start=100,
    )
)


@dataclass
class StoreSurvey:
    """What one pass over a store's records finds.

    Attributes:
        targets: (R, T) float64 unscaled graph targets (graph tasks; None for node tasks).
        elements: {Z: (records holding Z, index of the first, its id)}, Z ascending.
    """

    targets: np.ndarray | None
    elements: dict[int, tuple[int, int, str]]


class StoreDataset(torch.utils.data.Dataset):
    """One store as model inputs.

    Args:
        path: store directory.
        task: ``"node"`` (per-atom labels: the descriptor sets in ``labels``, concatenated) or
            ``"graph"`` (structure targets: the target names in ``labels``).
        labels: descriptor set names (node) or target names (graph).
        max_neighbors: keep each atom's nearest K edges (0 = all).
        cutoff: drop edges at or beyond this distance, Å (must not exceed the store's cutoff).
        scaler: label scaling applied to ``y`` (identity if None).

    Items are dicts: ``z`` (N,) int64, ``edge_index`` (2, E) int64 (row 0 = neighbour j, row 1 =
    centre i), ``edge_vec`` (E, 3) float32 Å, ``y`` (N, D) or (1, T) float32 (scaled), ``index``.
    """

    def __init__(
        self,
        path,
        task: str,
        labels: Sequence[str],
        max_neighbors: int = 32,
        cutoff: float | None = None,
        scaler: LabelScaler | None = None,
    ):
        if task not in ("node", "graph"):
            raise ValueError(f"task must be 'node' or 'graph', got {task!r}")
        self.path = str(path)
        self.task = task
        self.labels = list(labels)
        self.max_neighbors = int(max_neighbors)
        store = self._open()
        self.store_cutoff = float(store.manifest["cutoff"])
        self.cutoff = self.store_cutoff if cutoff is None else float(cutoff)
        if self.cutoff > self.store_cutoff + 1e-9:
            raise StoreError(
                f"{path}: model cutoff {self.cutoff} Å exceeds the store's {self.store_cutoff} Å "
                f"(its edges stop there); rebuild the store with --cutoff {self.cutoff}"
            )
        if task == "node":  # every set is present: _open refused an absent or unknown one,
            # naming how to get it (schemas: fp-build fetch from the store's origin, or add)
            self.label_dim = sum(store.manifest["descriptors"][n]["dim"] for n in self.labels)
        else:
            missing = [n for n in self.labels if n not in store.target_names]
            if missing:
                raise StoreError(
                    f"{path}: target(s) {missing} not in store (targets: {store.target_names})"
                )
            self._target_cols = [store.target_names.index(n) for n in self.labels]
            self.label_dim = len(self.labels)
        self.scaler = scaler or LabelScaler.identity(self.label_dim)
        self._store: Store | None = None  # opened per process on first item

    def _open(self) -> Store:
        descriptors = self.labels if self.task == "node" else []
        return open_store(self.path, descriptors=descriptors)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = self._open()
        return self._store

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_store"] = None  # each worker opens its own
        return state

    def __len__(self) -> int:
        return len(self.store)

    def _read(self, index: int) -> dict:
        return self.store.get(index, descriptors=self.labels if self.task == "node" else [])

    def _labels(self, rec: dict) -> np.ndarray:
        """Unscaled float64 labels of a record: (N, D) node labels or (1, T) targets."""
        if self.task == "node":
            return np.concatenate([np.asarray(rec[n], np.float64) for n in self.labels], axis=1)
        return np.asarray(rec["targets"], np.float64)[self._target_cols][None, :]

    def raw(self, index: int) -> tuple[str, np.ndarray]:
        """(id, unscaled float64 labels) of record ``index``, one read."""
        rec = self._read(index)
        return rec["id"], self._labels(rec)

    def targets(self) -> np.ndarray:
        """(R, T) float64 unscaled graph targets of every record (reads every record)."""
        if self.task != "graph":
            raise ValueError("targets() is for graph tasks")
        return self.survey().targets

    def survey(self, indices: Sequence[int] | None = None) -> StoreSurvey:
        """One pass over records ``indices`` (default: all), graphs only (no label sets):
        the graph targets and the atomic numbers present (see :class:`StoreSurvey`)."""
        indices = range(len(self)) if indices is None else indices
        targets, elements = [], {}
        for i in indices:
            rec = self.store.get(int(i), descriptors=[])
            for z in np.unique(rec["z"]).tolist():
                if z in elements:
                    elements[z][0] += 1
                else:
                    elements[z] = [1, int(i), rec["id"]]
            if self.task == "graph":
                targets.append(self._labels(rec))
        return StoreSurvey(
            np.concatenate(targets) if targets else None,
            {z: tuple(v) for z, v in sorted(elements.items())},
        )

    def check_atomic_numbers(self, max_z: int, survey: StoreSurvey | None = None) -> None:
        """Raise TrainingError if a record holds an atomic number the model cannot embed
        (Z >= ``max_z``), naming the store, each such element, its record count and the first
        record (from ``survey``, or a pass over every record)."""
        survey = survey or self.survey()
        bad = {z: v for z, v in survey.elements.items() if z >= max_z}
        if not bad:
            return
        what = "; ".join(
            f"Z={z}{f' ({_SYMBOLS[z]})' if z in _SYMBOLS else ''} in {n} record(s), first "
            f"record {i} (id {rid})"
            for z, (n, i, rid) in bad.items()
        )
        raise TrainingError(
            f"{self.path}: atomic numbers beyond the model's embedding (Z < {max_z}): {what}; "
            f"leave these structures out of the store"
        )

    def __getitem__(self, index: int) -> dict:
        rec = self._read(index)
        edge_index = np.asarray(rec["edge_index"], dtype=np.int64)
        shift = np.asarray(rec["edge_shift"], dtype=np.float64)
        vec = edge_vectors(rec["pos"], rec["cell"], edge_index, shift)
        dist = np.sqrt(np.einsum("ij,ij->i", vec, vec))
        keep = nearest_k(edge_index, dist, self.max_neighbors, self.cutoff)
        if self.task == "node":  # (N, D): the sets side by side, scaled without float64 copies
            y = self.scaler.transform_float32([rec[n] for n in self.labels])
        else:
            y = self.scaler.transform(self._labels(rec)).astype(np.float32)
        return {
            "z": torch.from_numpy(np.asarray(rec["z"], dtype=np.int64)),
            "edge_index": torch.from_numpy(edge_index[:, keep]),
            "edge_vec": torch.from_numpy(vec[keep].astype(np.float32)),
            "y": torch.from_numpy(y),
            "index": index,
        }

    def __getitems__(self, indices: Sequence[int]) -> BatchItems:
        """Items ``indices`` already collated: what a DataLoader with ``batch_size`` fetches
        (torch calls this instead of ``__getitem__`` per index, then ``collate_fn`` on the
        result; :func:`collate` passes the :class:`Batch` through). Bitwise the batch that
        :func:`collate` makes of ``[self[i] for i in indices]``, built in one pass per batch:
        edge vectors, distances and nearest-K over the whole batch in single NumPy calls, the
        scaled labels written straight into the batch buffer (in a DataLoader worker a reused
        shared-memory buffer, see :class:`_SharedPool`)."""
        return BatchItems(self._batch([int(i) for i in indices]), self.task == "node")

    def _batch(self, indices: list[int]) -> Batch:
        recs = [self._read(i) for i in indices]
        sizes = np.array([len(rec["z"]) for rec in recs], np.int64)
        n_edges = np.array([rec["edge_index"].shape[1] for rec in recs], np.int64)
        offsets = np.cumsum(sizes) - sizes
        pos = np.concatenate([rec["pos"] for rec in recs]) if recs else np.zeros((0, 3))
        edge_index = np.concatenate([rec["edge_index"] for rec in recs], axis=1).astype(np.int64)
        edge_index += np.repeat(offsets, n_edges)
        # shift @ cell one structure at a time (the call edge_vectors makes: same BLAS result),
        # then the rest of edge_vectors' formula over the whole batch, in its order
        vec = np.concatenate(
            [np.asarray(rec["edge_shift"], dtype=np.float64) @ rec["cell"] for rec in recs]
        )
        vec += np.take(pos, edge_index[0], axis=0)  # (pos[j] + shift @ cell): commutative
        vec -= np.take(pos, edge_index[1], axis=0)
        dist = np.sqrt(np.einsum("ij,ij->i", vec, vec))
        keep = nearest_k(edge_index, dist, self.max_neighbors, self.cutoff)
        kept = int(np.count_nonzero(keep))
        n_atoms, graphs = int(sizes.sum()), len(recs)
        y_rows, y_dim = (
            (n_atoms, self.label_dim) if self.task == "node" else (graphs, self.label_dim)
        )
        buffer, (z, ei, ev, batch, y, index), lease = _allocate(
            [
                (torch.int64, (n_atoms,)),
                (torch.int64, (2, kept)),
                (torch.float32, (kept, 3)),
                (torch.int64, (n_atoms,)),
                (torch.float32, (y_rows, y_dim)),
                (torch.int64, (graphs,)),
            ]
        )
        np.concatenate([rec["z"] for rec in recs], out=z.numpy(), casting="unsafe")
        np.compress(keep, edge_index, axis=1, out=ei.numpy())
        ev.numpy()[:] = vec[keep]  # float64 -> float32 rounds as astype does
        batch.numpy()[:] = np.repeat(np.arange(graphs), sizes)
        index.numpy()[:] = indices
        if self.task == "node":
            self.scaler.scale_into(recs, self.labels, y.numpy())
        else:
            for g, rec in enumerate(recs):
                y.numpy()[g] = self.scaler.transform(self._labels(rec)).astype(np.float32)[0]
        return Batch(z, ei, ev, batch, y, index, graphs, buffer, lease)


@dataclass
class Batch:
    """Several structures as one disconnected graph.

    z (N,), edge_index (2, E) with node offsets applied, edge_vec (E, 3), batch (N,) graph of
    each node, y (N, D) node labels or (G, T) graph labels, index (G,) store indices.

    A batch made by :func:`collate` or :meth:`StoreDataset.__getitems__` keeps its tensors as
    views of one byte ``buffer`` and pickles as that one buffer: a worker hands the main process
    one shared-memory segment per batch instead of one per tensor (each costs both processes a
    socket round trip to pass its file descriptor; with EAD set 2 that was the main process's
    largest cost, ``bench/results/loader.md``). Inside a DataLoader worker the buffer is one of
    the worker's reused shared-memory buffers (:class:`_SharedPool`, ``lease`` says which):
    the main process maps each of them once and hands the worker the buffer back when the last
    tensor of the batch is freed.
    """

    z: torch.Tensor
    edge_index: torch.Tensor
    edge_vec: torch.Tensor
    batch: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    num_graphs: int
    buffer: torch.Tensor | None = field(default=None, repr=False, compare=False)
    lease: _Lease | None = field(default=None, repr=False, compare=False)

    def __reduce__(self):
        tensors = [getattr(self, name) for name in _BATCH_TENSORS]
        if self.buffer is None or not all(_views(t, self.buffer) for t in tensors):
            return (Batch, (*tensors, self.num_graphs))
        layout = [
            (str(t.dtype).removeprefix("torch."), tuple(t.shape), t.storage_offset() * t.itemsize)
            for t in tensors
        ]
        if self.lease is not None:
            return (_batch_from_pool, (self.lease.reduce(), layout, self.num_graphs))
        return (_batch_from_buffer, (self.buffer, layout, self.num_graphs))

    def to(self, device, non_blocking: bool = False) -> Batch:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(
            move(self.z),
            move(self.edge_index),
            move(self.edge_vec),
            move(self.batch),
            move(self.y),
            self.index,
            self.num_graphs,
        )

    def pin_memory(self) -> Batch:
        return Batch(
            self.z.pin_memory(),
            self.edge_index.pin_memory(),
            self.edge_vec.pin_memory(),
            self.batch.pin_memory(),
            self.y.pin_memory(),
            self.index,
            self.num_graphs,
        )


class BatchItems(Sequence):
    """What :meth:`StoreDataset.__getitems__` returns: the collated :class:`Batch` (``batch``),
    which :func:`collate` passes through, and a sequence of its items for any other collate
    function or wrapper dataset (each item as ``StoreDataset[i]`` makes it, built on demand;
    ``per_atom``: ``y`` has a row per atom, else one per structure)."""

    def __init__(self, batch: Batch, per_atom: bool):
        self.batch = batch
        self.per_atom = per_atom

    def __len__(self) -> int:
        return self.batch.num_graphs

    def __getitem__(self, g):
        if isinstance(g, slice):
            return [self[k] for k in range(*g.indices(len(self)))]
        if not -len(self) <= g < len(self):
            raise IndexError(g)
        g %= len(self)
        b = self.batch
        bounds = torch.tensor([g, g + 1])
        n0, n1 = torch.searchsorted(b.batch, bounds).tolist()  # graph ids are non-decreasing
        e0, e1 = torch.searchsorted(b.batch[b.edge_index[1]], bounds).tolist()
        return {
            "z": b.z[n0:n1].clone(),
            "edge_index": b.edge_index[:, e0:e1] - n0,
            "edge_vec": b.edge_vec[e0:e1].clone(),
            "y": (b.y[n0:n1] if self.per_atom else b.y[g : g + 1]).clone(),
            "index": int(b.index[g]),
        }


_BATCH_TENSORS = ("z", "edge_index", "edge_vec", "batch", "y", "index")
_ALIGN = 8  # byte alignment of each tensor in a batch buffer (the widest element)


def _views(tensor: torch.Tensor, buffer: torch.Tensor) -> bool:
    """Whether ``tensor`` is a contiguous view into ``buffer``'s storage."""
    same = tensor.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
    return same and tensor.is_contiguous()


def _view(buffer: torch.Tensor, dtype: torch.dtype, shape: tuple, offset: int) -> torch.Tensor:
    """A tensor of ``dtype`` and ``shape`` over ``buffer``'s bytes from ``offset`` (aligned)."""
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    return buffer[offset : offset + nbytes].view(dtype).view(shape)


def _batch_from_buffer(buffer: torch.Tensor, layout: list, num_graphs: int) -> Batch:
    """Rebuild a pickled :class:`Batch` from its buffer and (dtype, shape, offset) per tensor."""
    tensors = [
        _view(buffer, getattr(torch, dtype), shape, offset) for dtype, shape, offset in layout
    ]
    return Batch(*tensors, num_graphs, buffer)


# -- reused shared-memory batch buffers -----------------------------------------------------------
#: buffers per worker: the batches it may have handed over and not yet had back (torch's
#: DataLoader keeps ``prefetch_factor`` = 4 batches per worker in flight, plus those the
#: training loop holds). When all are out, a batch gets a fresh segment as before.
POOL_SLOTS = 8
_GROWTH = 1.25  # a buffer that must grow is made this much larger than asked for


@dataclass
class _Lease:
    """Buffer ``slot`` of the worker pool ``token``, generation ``generation`` (bumped when the
    slot's buffer is replaced by a larger one), as one batch holds it. ``storage`` and
    ``flags`` are sent along until the main process has them (the first batch of a buffer)."""

    pool: _SharedPool
    slot: int
    generation: int
    nbytes: int

    def reduce(self) -> tuple:
        """The pickled form: (token, pid, slot, generation, nbytes, storage or None, flags or
        None); the storage and flags travel as torch shares them (a file descriptor)."""
        pool = self.pool
        storage = None
        if pool.sent[self.slot] != self.generation:
            storage = pool.buffers[self.slot].untyped_storage()
            pool.sent[self.slot] = self.generation
        flags = None
        if not pool.flags_sent:
            flags, pool.flags_sent = pool.flags.untyped_storage(), True
        return (pool.token, os.getpid(), self.slot, self.generation, self.nbytes, storage, flags)


class _SharedPool:
    """A DataLoader worker's reused shared-memory batch buffers (:data:`POOL_SLOTS` of them).

    Writing a batch into a fresh shared-memory segment first-touches every page (on a VM about
    2 ms per EAD-set-2 batch, more than decoding it; ``bench/results/loader.md``); a reused
    buffer's pages are mapped already. ``flags`` (a shared byte per slot) says which buffers
    the main process holds: the worker sets a slot's flag when it hands the batch over, the main
    process clears it when the batch's last tensor is freed (:func:`_batch_from_pool`), and only
    then does the worker write into that buffer again. Segments are torch's (unlinked at once
    under the default ``file_descriptor`` strategy, so nothing is left in /dev/shm); each lives
    while this worker or the main process maps it.
    """

    def __init__(self, slots: int = POOL_SLOTS):
        self.token = os.urandom(8).hex()  # names this pool (pids get reused)
        self.flags = _shared_bytes(slots)
        self.flags.numpy()[:] = 0
        self.flags_sent = False
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.generations = [0] * slots
        self.sent = [0] * slots  # generation of each slot the main process has been sent

    def lease(self, nbytes: int) -> tuple[torch.Tensor, _Lease] | None:
        """A buffer of at least ``nbytes`` bytes and its lease, or None when all are out."""
        flags = self.flags.numpy()
        free = [k for k in range(len(self.buffers)) if flags[k] == 0]
        if not free:
            return None
        fits = [k for k in free if self.buffers[k] is not None and len(self.buffers[k]) >= nbytes]
        if fits:
            slot = fits[0]
        else:
            slot = next((k for k in free if self.buffers[k] is None), free[0])
            self.buffers[slot] = _shared_bytes(max(nbytes, int(nbytes * _GROWTH)))
            self.generations[slot] += 1
        flags[slot] = 1
        return self.buffers[slot], _Lease(self, slot, self.generations[slot], nbytes)


_POOL: dict[int, _SharedPool] = {}  # pid -> this worker's pool (a forked child starts anew)


def _worker_pool() -> _SharedPool | None:
    """This process's pool if it is a DataLoader worker, else None."""
    if torch.utils.data.get_worker_info() is None:
        return None
    pid = os.getpid()
    if pid not in _POOL:
        _POOL.clear()
        _POOL[pid] = _SharedPool()
    return _POOL[pid]


def _shared_bytes(nbytes: int) -> torch.Tensor:
    """A uint8 tensor of ``nbytes`` in a fresh torch shared-memory segment."""
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))


# main process: token -> {"pid", "flags" (numpy view), "slots": {slot: (generation, storage)}}
_MAPPED: dict[str, dict] = {}
_MAPPED_LOCK = threading.Lock()


def _release(flags: np.ndarray, slot: int) -> None:
    flags[slot] = 0  # the worker may write this buffer again


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_worker_buffers() -> int:
    """Drop this process's mappings of the batch buffers of DataLoader workers that have
    exited (also done whenever a batch arrives from a new worker); returns how many pools were
    dropped. Batches still held keep their own buffer until freed."""
    with _MAPPED_LOCK:
        dead = [token for token, entry in _MAPPED.items() if not _alive(entry["pid"])]
        for token in dead:
            del _MAPPED[token]
    return len(dead)


def _batch_from_pool(lease: tuple, layout: list, num_graphs: int) -> Batch:
    """Rebuild, in the main process, a batch a worker wrote into one of its pool's buffers:
    map the buffer (the first time), view its first ``nbytes`` as this batch's buffer, and
    clear the buffer's flag once the last tensor over it is freed."""
    token, pid, slot, generation, nbytes, storage, flags = lease
    with _MAPPED_LOCK:
        entry = _MAPPED.get(token)
        if entry is None:
            new_pool = True
            entry = _MAPPED[token] = {"pid": pid, "flags": None, "slots": {}}
        else:
            new_pool = False
        if flags is not None:
            entry["flags"] = torch.empty(0, dtype=torch.uint8).set_(flags).numpy()
        if storage is not None:
            entry["slots"][slot] = (generation, torch.empty(0, dtype=torch.uint8).set_(storage))
        held, mapped = entry["slots"][slot]
        flags_view = entry["flags"]
    if held != generation:  # cannot happen: a worker's batches arrive in order
        raise RuntimeError(
            f"batch buffer {slot} of worker {pid}: generation {generation} not mapped"
        )
    if new_pool:
        release_worker_buffers()
    exporter = mapped.numpy()[:nbytes]  # this batch's own view: freed with its last tensor
    weakref.finalize(exporter, _release, flags_view, slot)
    buffer = (
        torch.frombuffer(exporter, dtype=torch.uint8)
        if nbytes
        else torch.empty(0, dtype=torch.uint8)
    )
    return _batch_from_buffer(buffer, layout, num_graphs)


def _allocate(
    layout: list[tuple[torch.dtype, tuple]],
) -> tuple[torch.Tensor, list[torch.Tensor], _Lease | None]:
    """One byte buffer holding tensors of the given (dtype, shape), each 8-byte aligned, the
    tensors, and the buffer's lease. In a DataLoader worker the buffer is in shared memory
    from the start, so handing the batch over copies nothing (as torch's default collate
    does): a reused buffer of the worker's pool when one is free, else a fresh segment."""
    offsets, total = [], 0
    for dtype, shape in layout:
        offsets.append(total)
        nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        total += nbytes + (-nbytes) % _ALIGN
    lease = None
    pool = _worker_pool()
    leased = pool.lease(total) if pool is not None and total else None
    if leased is not None:
        buffer, lease = leased
        buffer = buffer[:total]
    elif pool is not None:
        buffer = _shared_bytes(total)
    else:
        buffer = torch.empty(total, dtype=torch.uint8)
    views = [_view(buffer, dt, shape, off) for (dt, shape), off in zip(layout, offsets)]
    return buffer, views, lease


def collate(items: Sequence[dict] | BatchItems) -> Batch:
    """Concatenate items into a :class:`Batch` (node indices offset per structure), its tensors
    views of one buffer (see :class:`Batch`); copies with NumPy (one thread: torch's
    multi-threaded ``cat`` of the labels costs more than the copy on busy cores). Items that
    :meth:`StoreDataset.__getitems__` collated already pass through."""
    if isinstance(items, BatchItems):
        return items.batch
    sizes = np.array([len(it["z"]) for it in items])
    n_edges = np.array([it["edge_index"].shape[1] for it in items])
    y_rows = sum(it["y"].shape[0] for it in items)
    n_atoms, n_edge = int(sizes.sum()), int(n_edges.sum())
    buffer, (z, edge_index, edge_vec, batch, y, index), lease = _allocate(
        [
            (torch.int64, (n_atoms,)),
            (torch.int64, (2, n_edge)),
            (torch.float32, (n_edge, 3)),
            (torch.int64, (n_atoms,)),
            (torch.float32, (y_rows, items[0]["y"].shape[1])),
            (torch.int64, (len(items),)),
        ]
    )
    np.concatenate([it["z"].numpy() for it in items], out=z.numpy())
    np.concatenate([it["edge_index"].numpy() for it in items], axis=1, out=edge_index.numpy())
    edge_index.numpy()[:] += np.repeat(np.cumsum(sizes) - sizes, n_edges)
    np.concatenate([it["edge_vec"].numpy() for it in items], out=edge_vec.numpy())
    batch.numpy()[:] = np.repeat(np.arange(len(items)), sizes)
    np.concatenate([it["y"].numpy() for it in items], out=y.numpy())
    index.numpy()[:] = [it["index"] for it in items]
    return Batch(z, edge_index, edge_vec, batch, y, index, len(items), buffer, lease)
