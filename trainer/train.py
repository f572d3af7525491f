"""The training loop: pre-training on descriptor labels, fine-tuning on properties.

:func:`train` runs one run as named steps, in the order they run (:func:`_train`): set-up
(:func:`_start`: device, distributed, run directory, seeds), data (:func:`_setup_data`: store,
splits, label scaling), model (:func:`_setup_model`: from scratch or ``init``), optimiser and
schedule (:func:`_setup_optimiser`), resume (:func:`_resume`), the epoch loop with validation,
checkpoints every epoch and on the best validation loss (:func:`_epoch_loop`), and a final test
pass writing predictions and ``result.json`` (:func:`_test`). Launch on several GPUs (or CPU
processes) with::

    torchrun --nproc_per_node N -m fingerprint_pretrain.trainer.cli pretrain --store mp.lmdb \\
        --descriptor eadset1

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from fingerprint_pretrain.schemas import open_store
from fingerprint_pretrain.trainer.checkpoint import (
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
from fingerprint_pretrain.trainer.config import TrainConfig, prepare_run_dir
from fingerprint_pretrain.trainer.data import (
    LabelScaler,
    StoreDataset,
    kfold_splits,
    random_split,
)
from fingerprint_pretrain.trainer.errors import TrainingError
from fingerprint_pretrain.trainer.evaluation import (
    EpochSampler,
    evaluate_split,
    forward,
    resolve_device,
    store_loader,
)

__all__ = [
    "ADAPT_DIR",
    "TrainingError",
    "adapt",
    "autocast_for",
    "build_model",
    "device_name",
    "load_checkpoint",
    "train",
    "transfer_weights",
]


# ------------------------------------------------------------------------------------------
# Set-up helpers
# ------------------------------------------------------------------------------------------
def _init_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (third-party code may use the global RNG)
    torch.manual_seed(seed)


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


def autocast_for(amp: bool, device: torch.device):
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
            message names the ``fp-build add`` command that adds it). StoreError: a set the
            store lists but lacks here (the message names how to get it: ``fp-build fetch``
            from the store's origin, else ``fp-build add``).
    """
    if pre["model_args"].get("mode") != "pretrain":
        raise TrainingError(
            f"{source}: a fine-tuning checkpoint (it predicts targets); task-adaptive "
            f"pre-training (--adapt-epochs) continues a pre-training checkpoint"
        )
    labels = list(pre["labels"])
    listed = open_store(store_path).available_descriptors
    missing = [n for n in labels if n not in listed]
    if missing:
        flags = " ".join(f"--descriptor {n}" for n in missing)
        raise TrainingError(
            f"{store_path}: lacks the descriptor set(s) {', '.join(missing)} that {source} "
            f"was pre-trained on; add them with: fp-build add {store_path} {flags}"
        )
    open_store(store_path, descriptors=labels)  # a listed set absent here: schemas' StoreError
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
    from fingerprint_pretrain.trainer.zoo import resolve, sha256_of

    device = resolve_device(cfg.device)
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


@dataclass
class _Run:
    """Where one run executes and what it resumes (set up by :func:`_start`).

    Attributes:
        cfg: the run's configuration; ``phase``: what is fixed from outside it.
        device, rank, world: the device and the process's place among ``world`` processes.
        resumed: the run's ``last.pt`` when it resumes one, else None.
    """

    cfg: TrainConfig
    phase: _Phase
    device: torch.device
    rank: int
    world: int
    resumed: dict | None

    @property
    def main(self) -> bool:
        """The process that writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"


class _Data(NamedTuple):
    """The run's data (:func:`_setup_data`): the dataset (its ``scaler`` set), the prediction
    level (``"node"``: descriptor labels per atom, pre-training; ``"graph"``: targets per
    structure, fine-tuning), the {"train", "val", "test"} record indices and the label
    scaling."""

    dataset: StoreDataset
    level: str
    splits: dict[str, np.ndarray]
    scaler: LabelScaler

    @property
    def manifest(self) -> dict:
        return self.dataset.store.manifest


class _Optimiser(NamedTuple):
    """AdamW and its plateau schedule (:func:`_setup_optimiser`)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau


@dataclass
class _Progress:
    """How far the run is (:func:`_resume`; the epoch loop appends to it).

    Attributes:
        start_epoch: the first epoch still to run (0-based).
        best_val: the lowest validation loss so far (standardised label units).
        history: one row per finished epoch (``metrics.csv``).
    """

    start_epoch: int = 0
    best_val: float = math.inf
    history: list[dict] = field(default_factory=list)


def _train(cfg: TrainConfig, phase: _Phase | None = None) -> dict:
    """One run of :func:`train`, with what ``phase`` fixes from outside ``cfg``: the steps in
    the order they run (the order of the random numbers they draw)."""
    run = _start(cfg, phase or _Phase())
    data = _setup_data(run)
    model = _setup_model(run, data)
    opt = _setup_optimiser(cfg, model)
    progress = _resume(run, model, opt)
    _epoch_loop(run, data, model, opt, progress)
    return _test(run, data, model, progress)


def _start(cfg: TrainConfig, phase: _Phase) -> _Run:
    """Device, processes, the run directory (a run there: refused unless resume with the same
    configuration, or overwrite), the checkpoint resumed, and the seeds."""
    device = resolve_device(cfg.device)
    rank, world = _init_distributed(device)
    prepare_run_dir(cfg, rank == 0)
    last_path = Path(cfg.run_dir) / "last.pt"
    resumed = load_checkpoint(last_path) if cfg.resume and last_path.exists() else None
    if resumed is not None and resumed["config"]["store"] != cfg.store:
        raise TrainingError(f"{last_path} belongs to a run on {resumed['config']['store']}")
    if rank == 0:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    _seed_everything(cfg.seed)
    return _Run(cfg, phase, device, rank, world, resumed)


# -- data ------------------------------------------------------------------------------------
def _setup_data(run: _Run) -> _Data:
    """The store's dataset, its splits and label scaling; a new run writes ``splits.npz`` and
    ``config.json``. A resumed run must be on the store it began with (same graphs and label
    hashes) and keeps its split."""
    cfg, resumed = run.cfg, run.resumed
    level = "node" if cfg.mode == "pretrain" else "graph"
    dataset = StoreDataset(cfg.store, level, cfg.labels, cfg.max_neighbors, cfg.cutoff)
    manifest = dataset.store.manifest
    if resumed is not None:
        here = describe_store(manifest, cfg.store, level, resumed["labels"])
        check_same_store(run.last_path, resumed["store"], here)
    survey = dataset.survey()  # one pass: targets (graph level) and the elements present
    dataset.check_atomic_numbers(model_args(cfg, dataset.label_dim)["max_z"], survey)
    splits = _run_splits(run, len(dataset))
    scaler = _label_scaler(run, dataset, level, survey.targets, splits["train"])
    dataset.scaler = scaler
    if run.main and resumed is None:
        np.savez(run.run_dir / "splits.npz", **splits)
        (run.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    return _Data(dataset, level, splits, scaler)


def _run_splits(run: _Run, n: int) -> dict[str, np.ndarray]:
    """The resumed run's split, else the phase's, else the configuration's (of ``n`` records).

    Raises:
        TrainingError: an empty training or validation split (never a best.pt chosen on 0
            structures).
    """
    cfg = run.cfg
    if run.resumed:
        splits = {k: np.asarray(v) for k, v in run.resumed["splits"].items()}
    else:
        splits = run.phase.splits or _splits(cfg, n)
    empty = [k for k in ("train", "val") if len(splits[k]) == 0]
    if empty:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
        how = f"split {cfg.split}"
        if cfg.fold is not None:
            how = f"fold {cfg.fold}, val_fraction {cfg.val_fraction}"
        raise TrainingError(
            f"{cfg.store}: the {' and '.join(empty)} split of its {n} structures is "
            f"empty ({sizes}; {how}); give it a larger fraction or use a larger store"
        )
    return splits


def _label_scaler(
    run: _Run, dataset: StoreDataset, level: str, targets: np.ndarray, train: np.ndarray
) -> LabelScaler:
    """The label scaling: the phase's (the adaptation: the pre-trained checkpoint's own); for
    descriptor labels the store manifest's statistics (``label_scaling``); for targets
    (``targets`` (records, labels), ``train`` the training records) standardisation on the
    training split (``target_scaling``) or none."""
    cfg, fixed = run.cfg, run.phase.scaler
    if fixed is not None:
        if len(fixed.shift) != dataset.label_dim:
            raise TrainingError(
                f"{run.phase.init}: its label scaling has {len(fixed.shift)} features, the "
                f"store's {', '.join(cfg.labels)} {dataset.label_dim}"
            )
        return fixed
    if level == "node":
        sets = dataset.store.manifest["descriptors"]
        if len(cfg.labels) == 1:
            stats = sets[cfg.labels[0]]["stats"]
        else:
            stats = {k: sum((sets[n]["stats"][k] for n in cfg.labels), []) for k in ("mean", "std")}
        return LabelScaler.from_stats(stats, cfg.label_scaling)
    if cfg.target_scaling == "standard":
        return LabelScaler.fit(targets[train])
    return LabelScaler.identity(dataset.label_dim)


# -- model, optimiser, schedule ----------------------------------------------------------------
def _setup_model(run: _Run, data: _Data) -> torch.nn.Module:
    """The model ``cfg`` describes, on the run's device, with the weights of its ``init`` (the
    phase's, else ``cfg.init``) when it starts a new run from one."""
    cfg = run.cfg
    model = build_model(cfg, data.dataset.label_dim).to(run.device)
    init_path = run.phase.init or cfg.init
    if init_path and run.resumed is None:
        _load_init(run, model, init_path, data)
    return model


def _load_init(run: _Run, model: torch.nn.Module, init_path: str, data: _Data) -> None:
    """Load checkpoint ``init_path`` into ``model``: every tensor (``keep_head``: continued
    pre-training) or :func:`transfer_weights` (the head's last layer re-initialised).

    Raises:
        TrainingError: its model differs from this run's (the differing keys named).
    """
    cfg, main = run.cfg, run.main
    init = load_checkpoint(init_path)
    ours = model_args(cfg, data.dataset.label_dim)
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
    if run.phase.keep_head:  # continued pre-training: every tensor, nothing re-initialised
        loaded = _load_whole(model, init["model"], init_path)
        if main:
            print(
                f"adapt: all {len(loaded)} tensors of {init_path}; pre-training "
                f"continues on {len(data.splits['train'])} structures of {cfg.store}"
            )
    else:
        copied = transfer_weights(model, init["model"])
        if main:
            print(f"init: {len(copied)} tensors copied from {init_path}")


def _setup_optimiser(cfg: TrainConfig, model: torch.nn.Module) -> _Optimiser:
    """AdamW (``lr``, ``weight_decay``) and ReduceLROnPlateau (``plateau_*``, ``min_lr``)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr
    )
    return _Optimiser(optimizer, scheduler)


def _resume(run: _Run, model: torch.nn.Module, opt: _Optimiser) -> _Progress:
    """A resumed run's model, optimiser, schedule, RNG states and history (from its
    ``last.pt``); a new run's empty progress."""
    ckpt = run.resumed
    if ckpt is None:
        return _Progress()
    model.load_state_dict(ckpt["model"])
    opt.optimizer.load_state_dict(ckpt["optimizer"])
    opt.scheduler.load_state_dict(ckpt["scheduler"])
    restore_rng(ckpt["rng"])
    return _Progress(ckpt["epoch"] + 1, ckpt["best_val"], ckpt["history"])


# -- epochs ------------------------------------------------------------------------------------
def _distributed(model: torch.nn.Module, run: _Run) -> torch.nn.Module:
    """``model`` as the steps call it: under DDP with several processes, compiled if asked."""
    net = model
    if run.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[run.device.index] if run.device.type == "cuda" else None
        )
    if run.cfg.compile:
        net = torch.compile(net, dynamic=True)
    return net


def _epoch_loop(
    run: _Run, data: _Data, model: torch.nn.Module, opt: _Optimiser, progress: _Progress
) -> None:
    """Epochs ``progress.start_epoch`` … ``cfg.epochs`` − 1: train, validate, step the
    schedule, append to ``progress`` and save (:func:`_save_epoch`)."""
    cfg, device, world = run.cfg, run.device, run.world
    net = _distributed(model, run)
    autocast = autocast_for(cfg.amp, device)
    train_sampler = EpochSampler(data.splits["train"], cfg.seed, True, run.rank, world)
    train_loader = store_loader(data.dataset, train_sampler, cfg, device)
    val_sampler = EpochSampler(data.splits["val"], cfg.seed, False, run.rank, world)
    val_loader = store_loader(data.dataset, val_sampler, cfg, device)
    writer = _tensorboard(run.run_dir) if run.main else None
    step = sum(h["steps"] for h in progress.history)
    for epoch in range(progress.start_epoch, cfg.epochs):
        train_sampler.set_epoch(epoch)
        started = time.perf_counter()
        train_loss, steps = _train_epoch(
            run, net, model, opt.optimizer, train_loader, autocast, epoch, writer, step
        )
        step += steps
        val_loss, val_mae = _evaluate_loss(net, val_loader, device, autocast, data.scaler, world)
        opt.scheduler.step(val_loss)
        improved = val_loss < progress.best_val
        progress.best_val = min(progress.best_val, val_loss)
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_mae": val_mae,
            "lr": opt.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
            "steps": steps,
        }
        progress.history.append(row)
        if run.main:
            state = _checkpoint_state(run, data, model, opt, progress, epoch)
            _save_epoch(run, state, epoch, improved, writer)
    if world > 1:
        dist.barrier()
    if writer is not None:
        writer.close()


def _train_epoch(
    run: _Run, net, model, optimizer, loader, autocast, epoch: int, writer, step: int
) -> tuple[float, int]:
    """One pass over the training split: L1 loss, backward, gradient-norm clip, AdamW step;
    TensorBoard's per-step loss every ``log_every`` steps (``step``: the steps before this
    epoch). Returns the mean training loss over all processes and this epoch's steps.

    Raises:
        TrainingError: a non-finite loss (naming the epoch, step, lr and the last checkpoint).
    """
    cfg = run.cfg
    net.train()
    total, count, steps = 0.0, 0, 0
    bar = _bar(loader, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and run.main)
    for batch in bar:
        batch = batch.to(run.device, non_blocking=True)
        with autocast:
            pred = forward(net, batch)
        loss = _l1(pred, batch.y)
        if not torch.isfinite(loss):
            last = run.last_path
            raise TrainingError(
                f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {steps + 1}, "
                f"lr {optimizer.param_groups[0]['lr']:.2e}; stopping (last good checkpoint: "
                f"{last if last.exists() else 'none'})"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        total += loss.item() * batch.num_graphs
        count += batch.num_graphs
        steps += 1
        if writer is not None and (step + steps) % cfg.log_every == 0:
            writer.add_scalar("train/loss_step", loss.item(), step + steps)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return _reduce_mean(total, count, run.device, run.world), steps


def _checkpoint_state(
    run: _Run,
    data: _Data,
    model: torch.nn.Module,
    opt: _Optimiser,
    progress: _Progress,
    epoch: int,
) -> dict:
    """The run's state after ``epoch`` in checkpoint format 2 (trainer.checkpoint): tensors and
    plain values only, with the model's architecture, what it predicts and the store's
    hashes."""
    cfg, adapted = run.cfg, run.phase.adapted
    manifest = data.manifest
    return {
        "format": FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "model_args": model_args(cfg, data.dataset.label_dim),
        "predicts": describe_predictions(manifest, data.level, cfg.labels),
        "labels": list(cfg.labels),
        "scaler": data.scaler.to_dict(),
        "store": describe_store(manifest, cfg.store, data.level, cfg.labels),
        "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(),
        "epoch": epoch,
        "best_val": float(progress.best_val),
        "history": progress.history,
        "rng": rng_state(),
        "config": cfg.to_dict(),
        "splits": {k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in data.splits.items()},
        **({"adapted": adapted} if adapted else {}),
    }


def _save_epoch(run: _Run, state: dict, epoch: int, improved: bool, writer) -> None:
    """The main process's files after ``epoch``: ``last.pt``, ``best.pt`` when it improved,
    ``epochN.pt`` every ``save_every`` epochs, ``metrics.csv``, the epoch's TensorBoard
    scalars and one printed line."""
    cfg, history = run.cfg, state["history"]
    save_checkpoint(state, run.last_path)
    if improved:
        save_checkpoint(state, run.best_path)
    if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
        save_checkpoint(state, run.run_dir / f"epoch{epoch + 1}.pt")  # kept (epoch ablation)
    _write_csv(run.run_dir / "metrics.csv", history)
    row = history[-1]
    if writer is not None:
        for key in ("train_loss", "val_loss", "val_mae", "lr"):
            writer.add_scalar(f"epoch/{key}", row[key], epoch + 1)
        writer.flush()
    print(  # one line per epoch, progress bars or not
        f"epoch {epoch + 1}: train {row['train_loss']:.4f}  val {row['val_loss']:.4f}  "
        f"val MAE {row['val_mae']:.4g}  lr {row['lr']:.2e}  {row['seconds']:.1f}s",
        flush=True,
    )


# -- test with the best weights ------------------------------------------------------------------
def _test(run: _Run, data: _Data, model: torch.nn.Module, progress: _Progress) -> dict:
    """The run's result: epochs, best validation loss, device, bf16 (and ``adapted``); with
    ``phase.test``, the main process loads ``best.pt``, adds the test split's MAE, writes
    ``test_predictions.csv`` (graph level) and ``result.json``."""
    cfg, adapted = run.cfg, run.phase.adapted
    result = {
        "epochs": len(progress.history),
        "best_val_loss": progress.best_val,
        "device": device_name(run.device),
        "bf16_autocast": _uses_bf16(cfg.amp, run.device),
        **({"adapted": adapted} if adapted else {}),
    }
    if run.main and run.best_path.exists() and run.phase.test:
        model.load_state_dict(load_checkpoint(run.best_path)["model"])
        test = data.splits["test"]
        result.update(
            evaluate_split(
                model,
                data.dataset,
                test,
                cfg,
                run.device,
                data.scaler,
                run.run_dir / "test_predictions.csv",
            )
        )
        (run.run_dir / "result.json").write_text(json.dumps(result, indent=1))
        print(f"test MAE {result['test_mae']:.6g} ({len(test)} structures)")
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
            pred = forward(net, batch).float()
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
