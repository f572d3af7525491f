"""The training loop: pre-training on descriptor labels, fine-tuning on properties.

One function, :func:`train`, reads top to bottom: set-up (device, distributed, seeds), data
(store, splits, label scaling), model (from scratch or ``init``), optimiser and schedule, an
epoch loop with validation, checkpoints every epoch and on the best validation loss, and a
final test pass writing predictions. Launch on several GPUs (or CPU processes) with::

    torchrun --nproc_per_node N -m trainer.cli pretrain --store mp.lmdb --descriptor eadset1

Resuming (``resume=True``) restores model, optimiser, scheduler, epoch, best loss, RNG states
and the split saved with the run; the data order of every epoch is a function of (seed, epoch),
so a run killed at any point and resumed ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from schemas import open_store
from trainer.checkpoint import (
    CHECKPOINT_VERSION,
    FORMAT,
    build_model_from_args,
    check_same_store,
    describe_predictions,
    describe_store,
    load_checkpoint,  # re-exported: trainer.train API before trainer.checkpoint existed
    model_args,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from trainer.config import TrainConfig, prepare_run_dir
from trainer.data import Batch, LabelScaler, StoreDataset, collate, kfold_splits, random_split
from trainer.errors import TrainingError

__all__ = [
    "ADAPT_DIR",
    "TrainingError",
    "adapt",
    "build_model",
    "load_checkpoint",
    "train",
    "transfer_weights",
]


# ------------------------------------------------------------------------------------------
# Set-up helpers
# ------------------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def _init_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (third-party code may use the global RNG)
    torch.manual_seed(seed)


class EpochSampler(Sampler[int]):
    """Indices of one split in an order fixed by (seed, epoch), sharded over ranks.

    Each rank gets every ``world``-th index of the list. Training (``shuffle``) lists are
    padded by wrapping so all ranks take the same number of steps (DDP synchronises every
    step); evaluation lists are not, so no structure is counted twice.
    """

    def __init__(self, indices: np.ndarray, seed: int, shuffle: bool, rank: int, world: int):
        self.indices = np.asarray(indices)
        self.seed, self.shuffle, self.rank, self.world = seed, shuffle, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        order = self.indices
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = order[rng.permutation(len(order))]
        per_rank = math.ceil(len(order) / self.world)
        if self.shuffle and per_rank * self.world > len(order) and len(order):
            order = np.resize(order, per_rank * self.world)
        return order[self.rank :: self.world]

    def __iter__(self):
        return iter(self._order().tolist())

    def __len__(self) -> int:
        return len(self._order())


def cpu_has_native_bfloat16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX tiles, where bfloat16 matrix products run at
    several times the float32 rate (measured: 3.5× for the ET training step)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers absent in this torch build
        return False


def device_name(device: torch.device) -> str:
    """What ran the run, for reports: the GPU's name, or the CPU model and the threads used."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model
            )
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} thread(s)"


def _uses_bf16(amp: bool, device: torch.device) -> bool:
    """Whether ``amp`` turns into bfloat16 autocast on ``device``: where the hardware does
    bfloat16 natively (CUDA GPUs, CPUs with AVX512-BF16/AMX)."""
    return amp and (device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bfloat16()))


def _autocast(amp: bool, device: torch.device):
    """bfloat16 autocast where ``_uses_bf16``; float32 elsewhere. Losses are always computed
    in float32."""
    if _uses_bf16(amp, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _splits(cfg: TrainConfig, n: int) -> dict[str, np.ndarray]:
    if cfg.fold is not None:
        train_val, test = kfold_splits(n)[cfg.fold]
        rng = np.random.default_rng(cfg.seed)
        train_val = rng.permutation(train_val)
        n_val = int(round(cfg.val_fraction * len(train_val)))
        parts = {
            "train": np.sort(train_val[n_val:]),
            "val": np.sort(train_val[:n_val]),
            "test": test,
        }
    else:
        train, val, test = random_split(n, cfg.split, cfg.seed)
        parts = {"train": train, "val": val, "test": test}
    if cfg.max_train is not None and cfg.max_train < len(parts["train"]):
        rng = np.random.default_rng([cfg.seed, 1])
        parts["train"] = np.sort(rng.choice(parts["train"], cfg.max_train, replace=False))
    if cfg.max_val is not None and cfg.max_val < len(parts["val"]):
        rng = np.random.default_rng([cfg.seed, 2])
        parts["val"] = np.sort(rng.choice(parts["val"], cfg.max_val, replace=False))
    return parts


def build_model(cfg: TrainConfig, out_dim: int) -> torch.nn.Module:
    """The model ``cfg`` describes, with ``out_dim`` outputs, freshly initialised."""
    return build_model_from_args(model_args(cfg, out_dim))


def transfer_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every parameter whose name and shape match, except the head's last layer (which is
    re-initialised, as the authors did). Returns the names copied."""
    own = model.state_dict()
    copied = []
    for name, value in state.items():
        if name.startswith("head.out.") or name not in own or own[name].shape != value.shape:
            continue
        own[name] = value
        copied.append(name)
    model.load_state_dict(own)
    return copied


def _load_whole(model: torch.nn.Module, state: dict[str, torch.Tensor], source) -> list[str]:
    """Load every tensor of ``state`` into ``model`` (the same architecture, head included);
    TrainingError naming ``source`` if they do not fit. Returns the names loaded."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise TrainingError(
            f"{source}: its weights do not fit this run's model ({first})"
        ) from None
    return list(state)


def _loader(dataset, sampler, cfg: TrainConfig, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        prefetch_factor=4 if cfg.num_workers > 0 else None,
    )


def _forward(model, batch: Batch) -> torch.Tensor:
    return model(batch.z, batch.edge_index, batch.edge_vec, batch.batch, batch.num_graphs)


def _l1(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the labels that are present (NaN targets are skipped)."""
    mask = ~torch.isnan(y)
    return (pred.float() - torch.nan_to_num(y)).abs()[mask].mean()


# ------------------------------------------------------------------------------------------
# Task-adaptive pre-training: finetune --init CKPT --adapt-epochs K
# ------------------------------------------------------------------------------------------
@dataclass
class _Phase:
    """What one run takes from outside its TrainConfig: set for the adaptation before
    fine-tuning and for the fine-tuning after it; the defaults are a plain run.

    Attributes:
        splits: fixed {"train", "val", "test"} record indices instead of the config's split
            (the adaptation's: the fine-tuning run's structures).
        scaler: fixed label scaling instead of the store's statistics (the adaptation's: the
            pre-trained checkpoint's).
        init: checkpoint to start from instead of ``cfg.init`` (the fine-tuning's: the
            adaptation's ``best.pt``).
        keep_head: load every tensor of ``init``, the head's last layer included (continued
            pre-training), instead of :func:`transfer_weights`.
        test: run the final test pass and write ``result.json``.
        adapted: what the model was adapted on, recorded in the checkpoints and result.
    """

    splits: dict[str, np.ndarray] | None = None
    scaler: LabelScaler | None = None
    init: str | None = None
    keep_head: bool = False
    test: bool = True
    adapted: dict | None = None


ADAPT_DIR = "adapt"  # the adaptation's run directory, inside the fine-tuning run's
# what the adaptation takes over from the pre-training run's configuration (a fresh optimiser
# and schedule as that run had them); ``adapt_lr`` / ``adapt_batch_size`` override
_INHERITED = (
    "lr",
    "weight_decay",
    "batch_size",
    "clip",
    "plateau_factor",
    "plateau_patience",
    "min_lr",
)


def _pretrained_labels(pre: dict, source: str, store_path: str) -> list[str]:
    """The label sets of pre-training checkpoint ``pre`` (from file ``source``), after checking
    that it is one and that the store holds them.

    Raises:
        TrainingError: a fine-tuning checkpoint; a label set missing from the store (the
            message names the ``fp-build add`` command that adds it).
    """
    if pre["model_args"].get("mode") != "pretrain":
        raise TrainingError(
            f"{source}: a fine-tuning checkpoint (it predicts targets); task-adaptive "
            f"pre-training (--adapt-epochs) continues a pre-training checkpoint"
        )
    labels = list(pre["labels"])
    present = open_store(store_path).descriptor_names
    missing = [n for n in labels if n not in present]
    if missing:
        flags = " ".join(f"--descriptor {n}" for n in missing)
        raise TrainingError(
            f"{store_path}: lacks the descriptor set(s) {', '.join(missing)} that {source} "
            f"was pre-trained on; add them with: fp-build add {store_path} {flags}"
        )
    return labels


def _adapt_config(cfg: TrainConfig, pre: dict, labels: list[str]) -> TrainConfig:
    """The adaptation's configuration: a pre-training run on the fine-tuning store, in
    ``RUN_DIR/adapt``, for ``cfg.adapt_epochs`` epochs, with the pre-training run's optimiser
    and schedule settings (:data:`_INHERITED`) unless ``adapt_lr`` / ``adapt_batch_size`` are
    given, and the fine-tuning run's model, device and data-loading settings."""
    saved = pre.get("config", {})
    inherited = {k: saved[k] for k in _INHERITED if k in saved}
    if cfg.adapt_lr is not None:
        inherited["lr"] = cfg.adapt_lr
    if cfg.adapt_batch_size is not None:
        inherited["batch_size"] = cfg.adapt_batch_size
    return cfg.updated(
        mode="pretrain",
        labels=labels,
        run_dir=str(Path(cfg.run_dir) / ADAPT_DIR),
        epochs=cfg.adapt_epochs,
        adapt_epochs=0,
        adapt_on="train",
        adapt_lr=None,
        adapt_batch_size=None,
        max_train=None,
        max_val=None,
        save_every=None,
        label_scaling=pre["scaler"]["mode"],
        **inherited,
    )


def _adapted_record(static: dict, adapt_dir: Path) -> dict:
    """``static`` (what was adapted on) completed from the adaptation's ``last.pt``: seconds
    (training and validation, all epochs, resumed ones included), best epoch (1-based) and its
    validation loss (standardised label units)."""
    history = load_checkpoint(adapt_dir / "last.pt")["history"]
    val = [h["val_loss"] for h in history]
    best = int(np.argmin(val))
    return {
        **static,
        "epochs": len(history),
        "seconds": float(sum(h["seconds"] for h in history)),
        "best_epoch": best + 1,
        "val_loss": float(val[best]),
    }


def adapt(cfg: TrainConfig) -> dict:
    """Task-adaptive pre-training, the step ``finetune --init CKPT --adapt-epochs K`` takes
    before fine-tuning: continue CKPT's descriptor pre-training on the fine-tuning store's own
    structures, in ``RUN_DIR/adapt/`` (a run directory of its own: ``last.pt``, ``best.pt``,
    ``splits.npz``, ``metrics.csv``, ``config.json``, and ``adapted.json`` when finished).

    - Structures: the fine-tuning run's training split (the indices fine-tuning uses, after
      ``max_train``), or with ``adapt_on="all"`` every record of the store; validation on the
      fine-tuning run's validation split. Only descriptor labels are read, never targets.
    - Labels: CKPT's label sets, scaled with CKPT's own scaler (not the store's statistics);
      the whole model is kept, head included; a fresh optimiser and schedule
      (:func:`_adapt_config`).
    - Resumable as any run; a finished adaptation (``adapted.json``) is not run again.

    Returns:
        The ``adapted`` record (``from``, ``zoo_name``, ``sha256``, ``labels``, ``on``,
        ``structures``, ``epochs``, ``seconds``, ``best_epoch``, ``val_loss``); fine-tuning
        starts from ``RUN_DIR/adapt/best.pt``, the best epoch.
    """
    from trainer.zoo import resolve, sha256_of

    device = _device(cfg.device)
    rank, _ = _init_distributed(device)
    prepare_run_dir(cfg, rank == 0)  # the fine-tuning run's directory, the adaptation's with it
    source = resolve(cfg.init)
    pre = load_checkpoint(source)
    labels = _pretrained_labels(pre, str(cfg.init), cfg.store)
    n = len(open_store(cfg.store))
    finetune_splits = _splits(cfg, n)  # the fine-tuning run computes the same ones
    train_idx = finetune_splits["train"] if cfg.adapt_on == "train" else np.arange(n)
    splits = {
        "train": np.asarray(train_idx, np.int64),
        "val": np.asarray(finetune_splits["val"], np.int64),
        "test": np.zeros(0, np.int64),  # nothing to test: the fine-tuning's test comes later
    }
    static = {
        "from": str(cfg.init),
        "zoo_name": (pre.get("zoo") or {}).get("name"),
        "sha256": sha256_of(source),
        "labels": labels,
        "on": cfg.adapt_on,
        "structures": int(len(splits["train"])),
        "epochs": cfg.adapt_epochs,
    }
    adapt_cfg = _adapt_config(cfg, pre, labels)
    adapt_dir = Path(adapt_cfg.run_dir)
    prepare_run_dir(adapt_cfg, rank == 0)
    done = adapt_dir / "adapted.json"
    if adapt_cfg.resume and done.exists():
        record = json.loads(done.read_text())
        if record.get("epochs") == cfg.adapt_epochs:
            return record
    scaler = LabelScaler.from_dict(pre["scaler"])
    _train(
        adapt_cfg,
        _Phase(
            splits=splits,
            scaler=scaler,
            init=str(source),
            keep_head=True,
            test=False,
            adapted=static,
        ),
    )
    record = _adapted_record(static, adapt_dir)
    if rank == 0:
        done.write_text(json.dumps(record, indent=1))
        print(
            f"adapted on {record['structures']} structures ({cfg.adapt_on}): best epoch "
            f"{record['best_epoch']}/{record['epochs']}, val loss {record['val_loss']:.4f}, "
            f"{record['seconds']:.1f}s"
        )
    return record


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    """Run (or resume) a pre-training or fine-tuning run. Returns the final metrics.

    Fine-tuning from ``cfg.init`` with ``cfg.adapt_epochs`` > 0 first adapts the pre-trained
    model to the store's structures (:func:`adapt`), then fine-tunes from the adaptation's
    best epoch; its checkpoints and ``result.json`` record ``adapted``.
    """
    if cfg.mode == "finetune" and cfg.init and cfg.adapt_epochs > 0:
        adapted = adapt(cfg)
        best = Path(cfg.run_dir) / ADAPT_DIR / "best.pt"
        return _train(cfg, _Phase(init=str(best), adapted=adapted))
    return _train(cfg)


def _train(cfg: TrainConfig, phase: _Phase | None = None) -> dict:
    """One run of :func:`train`, with what ``phase`` fixes from outside ``cfg``."""
    phase = phase or _Phase()
    device = _device(cfg.device)
    rank, world = _init_distributed(device)
    main = rank == 0
    prepare_run_dir(cfg, main)  # a run there: refused unless resume (same config) or overwrite
    run_dir = Path(cfg.run_dir)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    resume = cfg.resume and last_path.exists()
    ckpt = load_checkpoint(last_path) if resume else None
    if ckpt is not None and ckpt["config"]["store"] != cfg.store:
        raise TrainingError(f"{last_path} belongs to a run on {ckpt['config']['store']}")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    _seed_everything(cfg.seed)

    # -- data ------------------------------------------------------------------------------
    task = "node" if cfg.mode == "pretrain" else "graph"
    dataset = StoreDataset(cfg.store, task, cfg.labels, cfg.max_neighbors, cfg.cutoff)
    manifest = dataset.store.manifest
    if ckpt is not None:
        here = describe_store(manifest, cfg.store, task, ckpt["labels"])
        check_same_store(last_path, ckpt["store"], here)
    survey = dataset.survey()  # one pass: targets (graph tasks) and the elements present
    dataset.check_atomic_numbers(model_args(cfg, dataset.label_dim)["max_z"], survey)
    splits = (
        {k: np.asarray(v) for k, v in ckpt["splits"].items()}
        if ckpt
        else phase.splits or _splits(cfg, len(dataset))
    )
    empty = [k for k in ("train", "val") if len(splits[k]) == 0]
    if empty:  # never a best.pt chosen on 0 structures
        sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
        how = f"split {cfg.split}"
        if cfg.fold is not None:
            how = f"fold {cfg.fold}, val_fraction {cfg.val_fraction}"
        raise TrainingError(
            f"{cfg.store}: the {' and '.join(empty)} split of its {len(dataset)} structures is "
            f"empty ({sizes}; {how}); give it a larger fraction or use a larger store"
        )
    if phase.scaler is not None:  # the adaptation: the pre-trained checkpoint's own scaling
        scaler = phase.scaler
        if len(scaler.shift) != dataset.label_dim:
            raise TrainingError(
                f"{phase.init}: its label scaling has {len(scaler.shift)} features, the "
                f"store's {', '.join(cfg.labels)} {dataset.label_dim}"
            )
    elif task == "node":
        if len(cfg.labels) == 1:
            stats = manifest["descriptors"][cfg.labels[0]]["stats"]
        else:
            stats = {
                k: sum((manifest["descriptors"][n]["stats"][k] for n in cfg.labels), [])
                for k in ("mean", "std")
            }
        scaler = LabelScaler.from_stats(stats, cfg.label_scaling)
    elif cfg.target_scaling == "standard":
        scaler = LabelScaler.fit(survey.targets[splits["train"]])
    else:
        scaler = LabelScaler.identity(dataset.label_dim)
    dataset.scaler = scaler
    if main and not resume:
        np.savez(run_dir / "splits.npz", **splits)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))

    # -- model, optimiser, schedule ------------------------------------------------------------
    model = build_model(cfg, dataset.label_dim).to(device)
    transferred: list[str] = []
    init_path = phase.init or cfg.init
    if init_path and not resume:
        init = load_checkpoint(init_path)
        ours = model_args(cfg, dataset.label_dim)
        differ = [
            k
            for k, v in init["model_args"].items()
            if k in ours and k not in ("mode", "out_dim", "max_neighbors") and ours[k] != v
        ]
        if differ:
            raise TrainingError(
                f"{init_path}: its model differs from this run's in "
                + ", ".join(f"{k} ({init['model_args'][k]} vs {ours[k]})" for k in differ)
            )
        if phase.keep_head:  # continued pre-training: every tensor, nothing re-initialised
            transferred = _load_whole(model, init["model"], init_path)
            if main:
                print(
                    f"adapt: all {len(transferred)} tensors of {init_path}; pre-training "
                    f"continues on {len(splits['train'])} structures of {cfg.store}"
                )
        else:
            transferred = transfer_weights(model, init["model"])
            if main:
                print(f"init: {len(transferred)} tensors copied from {init_path}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr
    )
    start_epoch, best_val, history = 0, math.inf, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best_val, history = ckpt["epoch"] + 1, ckpt["best_val"], ckpt["history"]
        restore_rng(ckpt["rng"])
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net, dynamic=True)
    autocast = _autocast(cfg.amp, device)

    train_sampler = EpochSampler(splits["train"], cfg.seed, True, rank, world)
    train_loader = _loader(dataset, train_sampler, cfg, device)
    val_loader = _loader(
        dataset, EpochSampler(splits["val"], cfg.seed, False, rank, world), cfg, device
    )
    writer = _tensorboard(run_dir) if main else None

    def checkpoint(epoch: int) -> dict:
        """The run's state in checkpoint format 2 (trainer.checkpoint): tensors and plain
        values only, with the model's architecture, what it predicts and the store's hashes."""
        return {
            "format": FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": model.state_dict(),
            "model_args": model_args(cfg, dataset.label_dim),
            "predicts": describe_predictions(manifest, task, cfg.labels),
            "labels": list(cfg.labels),
            "scaler": scaler.to_dict(),
            "store": describe_store(manifest, cfg.store, task, cfg.labels),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "best_val": float(best_val),
            "history": history,
            "rng": rng_state(),
            "config": cfg.to_dict(),
            "splits": {k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in splits.items()},
            **({"adapted": phase.adapted} if phase.adapted else {}),
        }

    # -- epochs --------------------------------------------------------------------------------
    step = sum(h["steps"] for h in history)
    for epoch in range(start_epoch, cfg.epochs):
        train_sampler.set_epoch(epoch)
        net.train()
        started = time.perf_counter()
        total, count, steps = 0.0, 0, 0
        bar = _bar(train_loader, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and main)
        for batch in bar:
            batch = batch.to(device, non_blocking=True)
            with autocast:
                pred = _forward(net, batch)
            loss = _l1(pred, batch.y)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {steps + 1}, "
                    f"lr {optimizer.param_groups[0]['lr']:.2e}; stopping (last good checkpoint: "
                    f"{last_path if last_path.exists() else 'none'})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            total += loss.item() * batch.num_graphs
            count += batch.num_graphs
            steps += 1
            step += 1
            if writer is not None and step % cfg.log_every == 0:
                writer.add_scalar("train/loss_step", loss.item(), step)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        train_loss = _reduce_mean(total, count, device, world)
        val_loss, val_mae = _evaluate_loss(net, val_loader, device, autocast, scaler, world)
        scheduler.step(val_loss)
        improved = val_loss < best_val
        best_val = min(best_val, val_loss)
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_mae": val_mae,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
            "steps": steps,
        }
        history.append(row)
        if main:
            state = checkpoint(epoch)
            save_checkpoint(state, last_path)
            if improved:
                save_checkpoint(state, best_path)
            if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
                save_checkpoint(state, run_dir / f"epoch{epoch + 1}.pt")  # kept (epoch ablation)
            _write_csv(run_dir / "metrics.csv", history)
            if writer is not None:
                for key in ("train_loss", "val_loss", "val_mae", "lr"):
                    writer.add_scalar(f"epoch/{key}", row[key], epoch + 1)
                writer.flush()
            print(  # one line per epoch, progress bars or not
                f"epoch {epoch + 1}: train {train_loss:.4f}  val {val_loss:.4f}  "
                f"val MAE {val_mae:.4g}  lr {row['lr']:.2e}  {row['seconds']:.1f}s",
                flush=True,
            )
    if world > 1:
        dist.barrier()

    # -- test with the best weights --------------------------------------------------------------
    result = {
        "epochs": len(history),
        "best_val_loss": best_val,
        "device": device_name(device),
        "bf16_autocast": _uses_bf16(cfg.amp, device),
        **({"adapted": phase.adapted} if phase.adapted else {}),
    }
    if main and best_path.exists() and phase.test:
        model.load_state_dict(load_checkpoint(best_path)["model"])
        result.update(
            evaluate_split(
                model,
                dataset,
                splits["test"],
                cfg,
                device,
                scaler,
                run_dir / "test_predictions.csv",
            )
        )
        (run_dir / "result.json").write_text(json.dumps(result, indent=1))
        print(f"test MAE {result['test_mae']:.6g} ({len(splits['test'])} structures)")
    if writer is not None:
        writer.close()
    return result


def _bar(loader, desc: str, enabled: bool):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def _reduce_mean(total: float, count: int, device, world: int) -> float:
    if world > 1:
        t = torch.tensor([total, count], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        total, count = t.tolist()
    return total / max(count, 1)


@torch.no_grad()
def _evaluate_loss(net, loader, device, autocast, scaler: LabelScaler, world: int):
    """Validation L1 on scaled labels, and MAE in label units (mean over labels present)."""
    net.eval()
    loss_sum, abs_sum, n_graphs, n_labels = 0.0, 0.0, 0, 0
    for batch in loader:
        batch = batch.to(device, non_blocking=True)
        with autocast:
            pred = _forward(net, batch).float()
        loss_sum += _l1(pred, batch.y).item() * batch.num_graphs
        n_graphs += batch.num_graphs
        err = (scaler.inverse(pred) - scaler.inverse(batch.y)).abs()
        mask = ~torch.isnan(err)
        abs_sum += err[mask].sum().item()
        n_labels += int(mask.sum())
    if world > 1:
        t = torch.tensor(
            [loss_sum, n_graphs, abs_sum, n_labels], dtype=torch.float64, device=device
        )
        dist.all_reduce(t)
        loss_sum, n_graphs, abs_sum, n_labels = t.tolist()
    return loss_sum / max(n_graphs, 1), abs_sum / max(n_labels, 1)


@torch.no_grad()
def evaluate_split(
    model,
    dataset: StoreDataset,
    indices,
    cfg: TrainConfig,
    device,
    scaler: LabelScaler,
    predictions_csv: Path | None,
) -> dict:
    """MAE (label units) of ``model`` on ``indices``; writes (id, target, prediction) rows."""
    model.eval()
    loader = _loader(dataset, EpochSampler(indices, 0, False, 0, 1), cfg, device)
    abs_sum, n_labels, rows = 0.0, 0, []
    for batch in loader:
        batch = batch.to(device)
        pred = scaler.inverse(_forward(model, batch).double()).cpu()
        if dataset.task == "graph":  # exact stored targets, not a float32 round trip
            ids, labels = zip(*(dataset.raw(i) for i in batch.index.tolist()))
            y = torch.tensor(np.concatenate(labels))
            rows += [[i, *t.tolist(), *p.tolist()] for i, t, p in zip(ids, y, pred)]
        else:
            y = scaler.inverse(batch.y.double().cpu())
        err = (pred - y).abs()
        mask = ~torch.isnan(err)
        abs_sum += err[mask].sum().item()
        n_labels += int(mask.sum())
    if predictions_csv is not None and dataset.task == "graph":
        with open(predictions_csv, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(
                [
                    "id",
                    *[f"target_{n}" for n in dataset.labels],
                    *[f"prediction_{n}" for n in dataset.labels],
                ]
            )
            out.writerows(rows)
    return {"test_mae": abs_sum / max(n_labels, 1), "test_structures": int(len(indices))}


def _write_csv(path: Path, rows: list[dict]) -> None:
    """All epochs so far (rewritten whole, so a resumed run never duplicates or drops rows)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        out = csv.DictWriter(fh, fieldnames=list(rows[0]))
        out.writeheader()
        out.writerows(rows)
    os.replace(tmp, path)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; tolerate its absence in odd installs
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
