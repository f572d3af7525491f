"""One configuration dataclass for pre-training and fine-tuning (the paper's values as defaults).

Every field is a command-line flag of ``fp-train`` (``--batch-size`` for ``batch_size``) and a
key of the YAML file given with ``--config``; flags override the file, the file overrides the
defaults. Defaults follow the paper (Table A.1) and the authors' configs
(``shared/design/authors_code.md``): pre-training 200 epochs, batch 8, split 0.8/0.05/0.15;
fine-tuning 100 epochs, batch 32, split 0.6/0.2/0.2; AdamW lr 1e-4, L1 loss, plateau schedule
(×0.8, patience 10, floor 1e-5), gradient-norm clip 10.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TrainConfig", "load_yaml"]


@dataclass
class TrainConfig:
    """Everything a run depends on (saved in every checkpoint and as ``config.yaml``).

    Attributes:
        mode: ``pretrain`` (node-level descriptor regression) or ``finetune`` (graph-level).
        store: store directory.
        labels: descriptor sets (pretrain) or target names (finetune).
        run_dir: where checkpoints, logs and predictions go.
        init: checkpoint to start from (finetune); None = from scratch (the baseline).
        epochs, batch_size, lr, weight_decay: optimisation (AdamW).
        hidden_channels, num_layers, num_rbf, num_heads, head_channels: model size.
        max_neighbors: nearest K edges per atom (0 = all within the cutoff).
        cutoff: model cutoff, Å (≤ the store's).
        self_loops: add torchmd-net's zero-length self edges (the authors dropped them).
        split: train/val/test fractions; seed: split, initialisation and data order.
        fold: MatBench fold 0-4 instead of a random split (test = the fold; validation =
            ``val_fraction`` of the rest).
        max_train: keep only this many training structures (low-data regime); None = all.
        max_val: validate on at most this many structures of the validation split (a fixed
            random subset; saves time when the training set is small); None = all.
        label_scaling: descriptor labels: per_feature | global | none (manifest statistics).
        target_scaling: graph targets: standard (mean/std of the training split) | none.
        clip: gradient-norm clip; plateau_factor/patience, min_lr: ReduceLROnPlateau.
        amp: bfloat16 autocast where the hardware does bfloat16 natively (CUDA GPUs; CPUs
            with AVX512-BF16 or AMX), float32 elsewhere; losses always in float32.
        compile: torch.compile the model.
        num_workers: DataLoader worker processes.
        device: auto | cpu | cuda | cuda:N.
        resume: continue from ``run_dir/last.pt``.
        log_every: steps between TensorBoard scalars.
        save_every: also keep ``epochN.pt`` every N epochs (pre-training epoch ablation).
        progress: progress bars (the per-epoch line and the final test MAE always print).
    """

    mode: str = "pretrain"
    store: str = ""
    labels: list[str] = field(default_factory=list)
    run_dir: str = "runs/run"
    init: str | None = None
    epochs: int = 200
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    hidden_channels: int = 128
    num_layers: int = 8
    num_rbf: int = 50
    num_heads: int = 8
    head_channels: int = 128
    max_neighbors: int = 32
    cutoff: float = 8.0
    self_loops: bool = False
    split: list[float] = field(default_factory=lambda: [0.8, 0.05, 0.15])
    seed: int = 111
    fold: int | None = None
    val_fraction: float = 0.1
    max_train: int | None = None
    max_val: int | None = None
    label_scaling: str = "per_feature"
    target_scaling: str = "standard"
    clip: float = 10.0
    plateau_factor: float = 0.8
    plateau_patience: int = 10
    min_lr: float = 1e-5
    amp: bool = True
    compile: bool = False
    num_workers: int = 2
    device: str = "auto"
    resume: bool = False
    log_every: int = 50
    save_every: int | None = None
    progress: bool = True

    @classmethod
    def defaults(cls, mode: str) -> TrainConfig:
        """The paper's defaults for ``mode`` (fine-tuning differs in epochs, batch, split)."""
        if mode == "pretrain":
            return cls(mode=mode)
        if mode == "finetune":
            return cls(mode=mode, epochs=100, batch_size=32, split=[0.6, 0.2, 0.2])
        raise ValueError(f"mode must be pretrain or finetune, got {mode!r}")

    def updated(self, **changes) -> TrainConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown configuration key(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_yaml(path: str | Path) -> dict:
    """Configuration keys from a YAML file (a flat mapping of TrainConfig fields)."""
    import yaml

    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of configuration keys")
    return {k.replace("-", "_"): v for k, v in data.items()}
