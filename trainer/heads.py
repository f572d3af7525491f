"""The trainer's models: a backbone (its ``representation``) under a regression head.

:class:`NodeRegressor` (pre-training: per-atom outputs) and :class:`GraphRegressor` (fine-tuning:
add-pooled per-structure outputs) hold any backbone of :mod:`trainer.backbones` (the ET of
:mod:`trainer.model`, SchNet, PaiNN) and the authors' :class:`MLPHead`. Imports run one way:
``heads -> backbones -> model``; the ET is built without importing ``trainer.backbones``.
"""

from __future__ import annotations

from fingerprint_pretrain.trainer.hyperparameters import ETConfig
from fingerprint_pretrain.trainer.model import EquivariantTransformer
from torch import Tensor, nn

__all__ = ["GraphRegressor", "MLPHead", "NodeRegressor", "representation"]


class MLPHead(nn.Module):
    """Linear(H, C) → SiLU → Linear(C, C) → SiLU → Linear(C, out) (the authors' head)."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int):
        super().__init__()
        self.lin1 = nn.Linear(in_channels, hidden)
        self.lin2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, out_channels)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.act(self.lin2(self.act(self.lin1(x)))))


def representation(cfg) -> nn.Module:
    """The backbone a config dataclass describes (its type picks it:
    ``trainer.backbones.backbone_from_config``). An ETConfig is built here, so the ET never
    imports ``trainer.backbones`` and PyTorch Geometric (seconds at every start-up)."""
    if type(cfg) is ETConfig:
        return EquivariantTransformer(cfg)
    from fingerprint_pretrain.trainer.backbones import backbone_from_config

    return backbone_from_config(cfg)


class NodeRegressor(nn.Module):
    """Pre-training model: a backbone + per-atom head; output (N, out_dim) (e.g. descriptor
    features). ``cfg`` is a backbone's config dataclass (:class:`ETConfig`, or
    ``trainer.backbones``' ``SchNetConfig`` / ``PaiNNConfig``): its type picks the backbone."""

    def __init__(self, cfg: ETConfig, out_dim: int):
        super().__init__()
        self.representation = representation(cfg)
        self.head = MLPHead(cfg.hidden_channels, cfg.head_channels, out_dim)

    def forward(self, z, edge_index, edge_vec, batch=None, num_graphs=None) -> Tensor:
        x, _ = self.representation(z, edge_index, edge_vec)
        return self.head(x)


class GraphRegressor(nn.Module):
    """Fine-tuning model: a backbone + global add pooling + head; output (num_graphs, out_dim).
    ``cfg`` as for :class:`NodeRegressor` (its type picks the backbone)."""

    def __init__(self, cfg: ETConfig, out_dim: int = 1):
        super().__init__()
        self.representation = representation(cfg)
        self.head = MLPHead(cfg.hidden_channels, cfg.head_channels, out_dim)

    def embed(self, z, edge_index, edge_vec, batch, num_graphs: int) -> Tensor:
        """(num_graphs, H) structure embeddings: the sum of final node features."""
        x, _ = self.representation(z, edge_index, edge_vec)
        return x.new_zeros(num_graphs, x.shape[1]).index_add_(0, batch, x)

    def forward(self, z, edge_index, edge_vec, batch, num_graphs: int) -> Tensor:
        return self.head(self.embed(z, edge_index, edge_vec, batch, num_graphs))
