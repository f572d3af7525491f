"""One configuration dataclass for pre-training and fine-tuning (the paper's values as defaults).

Every field is a command-line flag of ``fp-train`` (``--batch-size`` for ``batch_size``) and a
key of the YAML file given with ``--config``; flags override the file, the file overrides the
defaults. Each field carries its own help text and unit (``dataclasses.field`` metadata
``help`` and ``unit``), which ``fp-train --help`` shows; fields typed ``Literal[...]`` list
their allowed values, and :meth:`TrainConfig.__post_init__` refuses any other value, a wrong
type or a value out of range (:class:`ConfigError`), so a typo never falls back silently.

Defaults follow the paper (Table A.1) and the authors' configs
(``shared/design/authors_code.md``): pre-training 200 epochs, batch 8, split 0.8/0.05/0.15;
fine-tuning 100 epochs, batch 32, split 0.6/0.2/0.2; AdamW lr 1e-4, L1 loss, plateau schedule
(×0.8, patience 10, floor 1e-5), gradient-norm clip 10.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import shutil
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fingerprint_pretrain.trainer.hyperparameters import BACKBONE_CONFIGS, RENAMED, field_names

__all__ = [
    "FOLDS",
    "ARCHITECTURE_KEYS",
    "MODELS",
    "MODEL_DEFAULTS",
    "MODEL_FIELDS",
    "RESUME_MAY_DIFFER",
    "ConfigError",
    "TrainConfig",
    "config_differences",
    "load_config_file",
    "prepare_run_dir",
]

FOLDS = 5  # MatBench's protocol: 5-fold KFold (fingerprint_pretrain.trainer.data.kfold_splits)

# The backbones ``model`` may name: fingerprint_pretrain.trainer.hyperparameters.BACKBONE_CONFIGS.
MODELS = tuple(BACKBONE_CONFIGS)

# TrainConfig's model fields: fp-train's model flags, the architecture a checkpoint's
# ``model_args`` records under the same names (checkpoint format 2; zoo cards list them in this
# order). Each but ``model`` and ``max_neighbors`` is a field of the backbones' config
# dataclasses (``cutoff`` under the name ``cutoff_upper``), which hold their defaults:
# - left None by default (MODEL_FIELDS, derived below): the chosen model's default
#   (MODEL_DEFAULTS); one the model does not have stays None, and a value given for it is
#   refused (ConfigError), never silently ignored;
# - with a default (hidden_channels, head_channels, cutoff): the one every backbone shares.
ARCHITECTURE_KEYS = (
    "model",
    "hidden_channels",
    "num_layers",
    "num_rbf",
    "num_heads",
    "num_filters",
    "radial_basis",
    "head_channels",
    "cutoff",
    "self_loops",
    "max_neighbors",
)


def _shared_default(name: str):
    """The default every backbone's config dataclass gives field ``name`` (TrainConfig's
    name); a field whose defaults differ between backbones must be one of MODEL_FIELDS."""
    own = RENAMED.get(name, name)
    defaults = {getattr(config_cls, own) for config_cls in BACKBONE_CONFIGS.values()}
    if len(defaults) != 1:
        raise AssertionError(f"backbones' defaults of {own} differ ({defaults}): leave it None")
    return defaults.pop()


# Fields a resumed run may change: how it runs, not what it computes (and ``epochs``, to
# continue a run for longer; the data order is a function of seed and epoch).
RESUME_MAY_DIFFER = frozenset(
    {
        "run_dir",
        "resume",
        "overwrite",
        "epochs",
        "save_every",
        "num_workers",
        "device",
        "compile",
        "log_every",
        "progress",
    }
)

# What a run writes into its run directory (removed by ``overwrite``; nothing else is touched).
RUN_FILES = (
    "last.pt",
    "best.pt",
    "result.json",
    "metrics.csv",
    "test_predictions.csv",
    "splits.npz",
    "config.json",
    "adapted.json",
)


class ConfigError(ValueError):
    """A configuration value of the wrong type, out of range or not among the allowed ones.

    Attributes:
        name: the field (``epochs``); the command line shows it as ``--epochs``.
        problem: what is wrong (``must be >= 1, got 0``).
    """

    def __init__(self, name: str, problem: str):
        self.name, self.problem = name, problem
        super().__init__(f"{name} {problem}")


def _f(  # noqa: A002  (dataclass field metadata)
    default, help: str, unit: str | None = None, modes: tuple[str, ...] | None = None
):
    """A field with its help text and unit; list defaults become factories. ``modes``: the
    commands that have the field as a flag (default: every command)."""
    meta = {"help": help, "unit": unit}
    if modes is not None:
        meta["modes"] = modes
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a run depends on (saved in every checkpoint and as ``config.json``).

    Each field's help and unit are beside it (``fields(TrainConfig)[k].metadata``).
    """

    mode: Literal["pretrain", "finetune"] = _f(
        "pretrain",
        "pretrain: node-level descriptor regression; finetune: graph-level property regression",
    )
    store: str = _f("", "store directory (LMDB or Zarr, from fp-build)")
    labels: list[str] = _f(
        [],
        "what the model learns to predict, by name: the store's descriptor sets, per atom "
        "(pretrain), or its targets, per structure (finetune)",
    )
    run_dir: str = _f("runs/run", "where checkpoints, logs and predictions go")
    init: str | None = _f(
        None,
        "the model to start from: a checkpoint file or a zoo model name (finetune); none = "
        "from scratch",
    )
    adapt_epochs: int = _f(
        0,
        "task-adaptive pre-training: before fine-tuning, continue --init's descriptor "
        "pre-training (its label sets and label scaling, head included) on this store's own "
        "structures for this many epochs, then fine-tune from its best epoch; descriptor "
        "labels need no DFT (the store must hold the checkpoint's label sets); 0 = off",
        "epochs",
        modes=("finetune",),
    )
    adapt_on: Literal["train", "all"] = _f(
        "train",
        "structures to adapt on: train (the fine-tuning training split, after --max-train) or "
        "all (every structure of the store, validation and test included: only their "
        "descriptor labels are used, never their targets)",
        modes=("finetune",),
    )
    adapt_lr: float | None = _f(
        None,
        "adaptation's AdamW learning rate (> 0); none = the checkpoint's configured lr",
        modes=("finetune",),
    )
    adapt_batch_size: int | None = _f(
        None,
        "adaptation's structures per optimiser step (>= 1); none = the checkpoint's",
        "structures",
        modes=("finetune",),
    )
    epochs: int = _f(200, "training epochs (>= 1)", "epochs")
    batch_size: int = _f(8, "structures per optimiser step (>= 1)", "structures")
    lr: float = _f(1e-4, "AdamW learning rate (> 0)")
    weight_decay: float = _f(0.01, "AdamW weight decay (>= 0)")
    model: Literal[MODELS] = _f(
        "et",
        "representation model (backbone): et (TorchMD-Net's equivariant transformer), schnet "
        "(invariant), painn (equivariant); fine-tuning with --init takes it from the checkpoint",
    )
    hidden_channels: int = _f(
        _shared_default("hidden_channels"),
        "model width: node feature channels (for et a multiple of num_heads)",
    )
    num_layers: int | None = _f(None, "interaction layers (attention layers for et)")
    num_rbf: int | None = _f(None, "radial basis functions of the edge expansion")
    num_heads: int | None = _f(None, "attention heads (et only)")
    num_filters: int | None = _f(None, "width of the continuous filters (schnet only)")
    radial_basis: Literal["gaussian", "bessel"] | None = _f(
        None,
        "radial basis (painn only): gaussian (SchNetPack's default) or bessel (the PaiNN paper's)",
    )
    head_channels: int = _f(
        _shared_default("head_channels"), "hidden width of the output head's MLP"
    )
    max_neighbors: int = _f(
        32, "keep each atom's nearest K edges; 0 = all within the cutoff", "neighbours per atom"
    )
    cutoff: float = _f(
        _shared_default("cutoff"),
        "the model's radial cutoff: edges longer than it are dropped from the store's graphs "
        "and the backbone's cosine cutoff vanishes there (> 0, at most the store's graph "
        "cutoff, the radius the store's edges were built with)",
        "Å",
    )
    self_loops: bool | None = _f(
        None, "add torchmd-net's zero-length self edges (et only; the authors dropped them)"
    )
    split: list[float] = _f(
        [0.8, 0.05, 0.15],
        "train/val/test fractions, each >= 0, summing to 1; repeat the flag for each "
        "(--split 0.6 --split 0.2 --split 0.2)",
        "fractions of the store",
    )
    seed: int = _f(111, "seed of the split, the initialisation and the data order (>= 0)")
    fold: int | None = _f(
        None,
        f"MatBench fold 0-{FOLDS - 1} instead of a random split (test = the fold, validation = "
        "val_fraction of the rest); none = random split",
    )
    val_fraction: float = _f(
        0.1, "with --fold: the fraction of the other folds used for validation", "fraction"
    )
    max_train: int | None = _f(
        None, "keep only this many training structures (low-data regime); none = all", "structures"
    )
    max_val: int | None = _f(
        None,
        "validate on at most this many structures (a fixed random subset); none = all",
        "structures",
    )
    label_scaling: Literal["per_feature", "global", "none"] = _f(
        "per_feature",
        "descriptor labels, from the store manifest's statistics: per_feature (each its own "
        "mean and std), global (one mean and std over all features), none",
    )
    target_scaling: Literal["standard", "none"] = _f(
        "standard", "graph targets: standard (mean and std of the training split) or none"
    )
    clip: float = _f(10.0, "gradient-norm clip (> 0)")
    plateau_factor: float = _f(0.8, "ReduceLROnPlateau: lr factor on a plateau (0 < f < 1)")
    plateau_patience: int = _f(10, "ReduceLROnPlateau: epochs without improvement", "epochs")
    min_lr: float = _f(1e-5, "ReduceLROnPlateau: lowest learning rate (>= 0)")
    amp: bool = _f(
        True,
        "bfloat16 autocast where the hardware does bfloat16 natively (CUDA GPUs; CPUs with "
        "AVX512-BF16 or AMX), float32 elsewhere; losses always in float32",
    )
    compile: bool = _f(False, "torch.compile the model")
    num_workers: int = _f(2, "DataLoader worker processes (0 = in the main process)")
    device: str = _f("auto", "auto, cpu, cuda, cuda:N or mps (must be present)")
    resume: bool = _f(
        False, "continue the run in --run-dir from its last.pt (same configuration only)"
    )
    overwrite: bool = _f(
        False, "start again in a --run-dir that holds a run, deleting that run's files"
    )
    log_every: int = _f(50, "optimiser steps between TensorBoard scalars", "steps")
    save_every: int | None = _f(
        None, "also keep epochN.pt every N epochs (pre-training epoch ablation)", "epochs"
    )
    progress: bool = _f(True, "progress bars (the per-epoch line and the test MAE always print)")

    def __post_init__(self) -> None:
        """Check types, allowed values and ranges (raises :class:`ConfigError`)."""
        self._check_types()
        self._fill_model_defaults()
        self._check_values()

    # -- checks --------------------------------------------------------------------------------
    def _check_types(self) -> None:
        """Every field holds a value of its annotated type (ints for floats are converted,
        paths for strings too); ``Literal`` fields one of their values."""
        for name, hint in _hints().items():
            value = getattr(self, name)
            kind, optional = _unoptional(hint)
            if value is None and optional:
                continue
            setattr(self, name, _typed(name, value, kind))

    def _fill_model_defaults(self) -> None:
        """Model fields left None take the model's default (:data:`MODEL_DEFAULTS`); a value
        for a field the model does not have is a ConfigError."""
        own = MODEL_DEFAULTS[self.model]
        for name in MODEL_FIELDS:
            value = getattr(self, name)
            if name in own:
                if value is None:
                    setattr(self, name, own[name])
            elif value is not None:
                users = " and ".join(m for m in MODELS if name in MODEL_DEFAULTS[m])
                raise ConfigError(
                    name, f"applies to --model {users} only, not {self.model} (leave it out)"
                )

    def _check_values(self) -> None:
        at_least = {
            "epochs": 1,
            "batch_size": 1,
            "hidden_channels": 1,
            "num_layers": 1,
            "num_rbf": 1,
            "num_heads": 1,
            "num_filters": 1,
            "head_channels": 1,
            "max_neighbors": 0,
            "seed": 0,
            "plateau_patience": 0,
            "num_workers": 0,
            "log_every": 1,
            "max_train": 1,
            "max_val": 1,
            "save_every": 1,
            "adapt_epochs": 0,
            "adapt_batch_size": 1,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigError(name, f"must be >= {low}, got {value}")
        positive = ("lr", "cutoff", "clip")
        non_negative = ("weight_decay", "min_lr")
        for name in (*positive, *non_negative):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name in positive and value == 0):
                bound = "> 0" if name in positive else ">= 0"
                raise ConfigError(name, f"must be finite and {bound}, got {value}")
        if self.adapt_lr is not None and not (math.isfinite(self.adapt_lr) and self.adapt_lr > 0):
            raise ConfigError("adapt_lr", f"must be finite and > 0, got {self.adapt_lr}")
        if self.mode != "finetune" and self.adapt_epochs:
            raise ConfigError(
                "adapt_epochs", "is for finetune --init (adaptation before fine-tuning)"
            )
        for name in ("plateau_factor", "val_fraction"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ConfigError(name, f"must be between 0 and 1 (exclusive), got {value}")
        if self.num_heads is not None and self.hidden_channels % self.num_heads:
            raise ConfigError(
                "hidden_channels",
                f"{self.hidden_channels} must be a multiple of num_heads {self.num_heads}",
            )
        split = self.split
        if len(split) != 3 or any(not math.isfinite(v) or v < 0 for v in split):
            raise ConfigError("split", f"must be 3 fractions >= 0 (train val test), got {split}")
        if abs(sum(split) - 1.0) > 1e-9:
            raise ConfigError("split", f"fractions must sum to 1, got {split} (sum {sum(split)})")
        if self.fold is not None and not 0 <= self.fold < FOLDS:
            raise ConfigError(
                "fold", f"must be 0 to {FOLDS - 1} (MatBench's folds), got {self.fold}"
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise ConfigError(
                "device", f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}"
            )
        if self.resume and self.overwrite:
            raise ConfigError("overwrite", "and resume exclude each other: choose one")

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def defaults(cls, mode: str) -> TrainConfig:
        """The paper's defaults for ``mode`` (fine-tuning differs in epochs, batch, split)."""
        if mode == "pretrain":
            return cls(mode=mode)
        if mode == "finetune":
            return cls(mode=mode, **FINETUNE_DEFAULTS)
        raise ConfigError("mode", f"must be pretrain or finetune, got {mode!r}")

    def updated(self, **changes) -> TrainConfig:
        """A copy with ``changes``. When ``model`` changes, each model field not in
        ``changes`` that holds the old model's default is re-derived for the new model (so
        ``updated(model="schnet")`` of the ET defaults is SchNet's defaults); one holding
        another value is kept, and refused if the new model does not have it."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown configuration key(s): {', '.join(sorted(unknown))}")
        if changes.get("model", self.model) != self.model:
            old = MODEL_DEFAULTS[self.model]
            for name in MODEL_FIELDS:
                if name not in changes and getattr(self, name) == old.get(name):
                    changes[name] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Model fields that default to the chosen backbone's value, and those values per backbone.
MODEL_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(TrainConfig)
    if f.name in ARCHITECTURE_KEYS and f.default is None
)
MODEL_DEFAULTS: dict[str, dict[str, object]] = {
    name: {
        k: getattr(config_cls, RENAMED.get(k, k))
        for k in MODEL_FIELDS
        if RENAMED.get(k, k) in field_names(config_cls)
    }
    for name, config_cls in BACKBONE_CONFIGS.items()
}

# Where fine-tuning's defaults differ from pre-training's (the paper's fine-tuning configs).
FINETUNE_DEFAULTS = {"epochs": 100, "batch_size": 32, "split": [0.6, 0.2, 0.2]}


@functools.cache
def _hints() -> dict:
    """TrainConfig's resolved annotations (the module uses postponed evaluation)."""
    return typing.get_type_hints(TrainConfig)


def _unoptional(hint) -> tuple[object, bool]:
    """(``X``, True) for ``X | None``; (``hint``, False) otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner[0], len(inner) < len(typing.get_args(hint))
    return hint, False


def _typed(name: str, value, kind):
    """``value`` as ``kind`` (int, float, bool, str, list[...] or a Literal), or ConfigError."""
    if typing.get_origin(kind) is Literal:
        allowed = typing.get_args(kind)
        if value not in allowed:
            raise ConfigError(name, f"must be one of {', '.join(allowed)}; got {value!r}")
        return value
    if typing.get_origin(kind) is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, f"must be a list, got {value!r}")
        (inner,) = typing.get_args(kind)
        return [_typed(name, v, inner) for v in value]
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, f"must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if isinstance(value, Path):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(name, f"must be a string, got {value!r}")
        return value
    return value


def config_differences(saved: dict, cfg: TrainConfig) -> list[str]:
    """The fields (outside :data:`RESUME_MAY_DIFFER`) in which ``cfg`` differs from ``saved``
    (a run's saved configuration), as ``"name saved -> now"`` strings."""
    now = cfg.to_dict()
    out = []
    for name, value in now.items():
        if name in RESUME_MAY_DIFFER or name not in saved:
            continue
        old = saved[name]
        if old != value and not (isinstance(old, list) and list(old) == list(value)):
            out.append(f"{name} {old!r} -> {value!r}")
    return out


def prepare_run_dir(cfg: TrainConfig, main: bool = True) -> None:
    """Refuse to start a run in a ``run_dir`` that holds one, unless asked.

    A run directory holds a run when it has ``last.pt`` or ``result.json``. Then:
    ``resume`` continues it, only if the configuration matches the run's (``config.json``;
    fields in :data:`RESUME_MAY_DIFFER` may change); ``overwrite`` deletes that run's files
    (:data:`RUN_FILES`, ``epochN.pt``, ``tensorboard/``; nothing else) on the main process;
    neither is an error naming both.

    Raises:
        ConfigError: the directory holds a run and neither flag fits (one line).
    """
    run_dir = Path(cfg.run_dir)
    last, result = run_dir / "last.pt", run_dir / "result.json"
    if not (last.exists() or result.exists()):
        return
    state = "a finished run" if result.exists() else "an unfinished run"
    if cfg.overwrite:
        if main:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
            for old in run_dir.glob("epoch*.pt"):
                old.unlink()
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
            shutil.rmtree(run_dir / "adapt", ignore_errors=True)  # its task-adaptive pre-training
        return
    if not cfg.resume:
        raise ConfigError(
            "run_dir",
            f"{run_dir} holds {state}; pass --resume to continue it (same configuration) or "
            f"--overwrite to delete it and start again",
        )
    saved_path = run_dir / "config.json"
    if not saved_path.exists():
        return
    differ = config_differences(json.loads(saved_path.read_text()), cfg)
    if differ:
        raise ConfigError(
            "run_dir",
            f"{run_dir} holds {state} with another configuration ({'; '.join(differ)}); "
            f"resume it with its own settings, choose another --run-dir, or pass --overwrite "
            f"to delete it and start again",
        )


def load_config_file(path: str | Path) -> dict:
    """Configuration keys from the file ``path`` (``fp-train --config``): JSON when the name
    ends in ``.json``, YAML otherwise; a flat mapping of TrainConfig field names (``-`` read
    as ``_``) to values, checked by :class:`TrainConfig` when the configuration is made.

    Raises:
        ValueError: one line naming the file: it does not parse, is not a mapping, has a
            key that is no TrainConfig field (the first such key, in the file's order), or a
            string that is no number for a numeric field (numeric strings, such as YAML 1.1's
            ``3e-4``, are read as numbers).
    """
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            problem = getattr(err, "problem", None) or err
            raise ValueError(f"{path}: not valid YAML ({where}{problem})") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of configuration keys")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in data:
        if key not in known:
            raise ValueError(f"{path}: unknown configuration key {key!r} (not a TrainConfig field)")
    return {key: _number_from_text(path, key, value, _hints()[key]) for key, value in data.items()}


def _number_from_text(path, key: str, value, hint):
    """``value`` of field ``key`` with numeric strings read as numbers where the field is an int
    or a float (or a list of them): YAML 1.1 reads ``3e-4`` and ``1e3`` (no dot) as strings.
    Other values are returned as they are (:class:`TrainConfig` checks them).

    Raises:
        ValueError: a string that is no number, naming the file and the field.
    """
    kind, _ = _unoptional(hint)
    if typing.get_origin(kind) is list and isinstance(value, list):
        (inner,) = typing.get_args(kind)
        return [_number_from_text(path, key, v, inner) for v in value]
    if kind not in (int, float) or not isinstance(value, str):
        return value
    what = "an integer" if kind is int else "a number"
    try:
        number = float(value)
        if kind is int:
            if not number.is_integer():
                raise ValueError(value)
            return int(value) if value.strip().lstrip("+-").isdigit() else int(number)
        return number
    except ValueError:
        raise ValueError(f"{path}: {key} must be {what}, got {value!r}") from None
