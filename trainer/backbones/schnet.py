"""SchNet (Schütt et al., NeurIPS 2017; J. Chem. Phys. 148, 241722 (2018)) on precomputed
periodic edges.

The architecture and parameter names are those of PyG's ``torch_geometric.nn.models.SchNet``
(``embedding``, ``distance_expansion``, ``interactions.{k}.mlp`` / ``.conv.lin1`` /
``.conv.lin2`` / ``.lin``), so its representation weights load by name
(``load_state_dict(pyg.state_dict(), strict=False)``); ``tests/trainer/test_backbones.py``
proves the node features equal to PyG's on the same graph. PyG's model searches its own graph
from positions (no periodic images); this one takes the store's edges with their image shifts
already applied, as :class:`fingerprint_pretrain.trainer.model.EquivariantTransformer` does.

Conventions: ``edge_index[0]`` = neighbour j (source), ``edge_index[1]`` = centre i (target,
where messages are summed); ``edge_vec = pos[j] + shift @ cell - pos[i]``, Å.

Update of layer t (H = hidden_channels, F = num_filters, G = num_rbf)::

    e_ij   = exp(-γ (d_ij - μ_k)²), k = 1..G           (Gaussians, μ_k evenly on [0, cutoff])
    W_ij   = Lin_F,F(ssp(Lin_G,F(e_ij))) · f_c(d_ij)     (filter; f_c the cosine cutoff)
    m_i    = Lin2_F,H(Σ_j W_ij ∘ Lin1_H,F(h_j))          (continuous-filter convolution, CFConv)
    h_i   ← h_i + Lin_H,H(ssp(m_i))                      (ssp(x) = softplus(x) − log 2)
"""

from __future__ import annotations

import dataclasses
import math

import torch
from fingerprint_pretrain.trainer.hyperparameters import (
    SchNetConfig,
)  # (defined there with the other backbones')
from fingerprint_pretrain.trainer.model import cosine_cutoff
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

__all__ = ["SchNet", "SchNetConfig"]


class ShiftedSoftplus(nn.Module):
    """ssp(x) = softplus(x) − log 2 (zero at x = 0)."""

    def __init__(self):
        super().__init__()
        self.shift = math.log(2.0)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.softplus(x) - self.shift


class GaussianSmearing(nn.Module):
    """exp(−γ (d − μ_k)²), μ_k = linspace(0, cutoff, G), γ = 1 / (2 Δμ²). Output (E, G)."""

    def __init__(self, cutoff: float, num_rbf: int):
        super().__init__()
        offset = torch.linspace(0.0, cutoff, num_rbf)
        self.coeff = -0.5 / (offset[1] - offset[0]).item() ** 2
        self.register_buffer("offset", offset)

    def forward(self, dist: Tensor) -> Tensor:
        return torch.exp(self.coeff * (dist.unsqueeze(1) - self.offset) ** 2)


class CFConv(MessagePassing):
    """Continuous-filter convolution: Lin2(Σ_j W_ij ∘ Lin1(h_j)), summed at the centre i."""

    def __init__(self, hidden: int, num_filters: int):
        super().__init__(aggr="add")
        self.lin1 = nn.Linear(hidden, num_filters, bias=False)
        self.lin2 = nn.Linear(num_filters, hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.lin1.weight)
        nn.init.xavier_uniform_(self.lin2.weight)
        self.lin2.bias.data.fill_(0)

    def forward(self, h: Tensor, edge_index: Tensor, filters: Tensor) -> Tensor:
        """``h`` (N, H) node features, ``filters`` (E, F) W_ij (cutoff applied) -> (N, H)."""
        return self.lin2(self.propagate(edge_index, x=self.lin1(h), filters=filters))

    def message(self, x_j: Tensor, filters: Tensor) -> Tensor:
        return x_j * filters

    def aggregate(self, inputs: Tensor, index: Tensor, dim_size: int | None = None) -> Tensor:
        """Σ of the messages (E, F) at their centres ``index`` -> (N, F).

        ``index_add`` instead of PyG's default sum aggregation (``scatter_add_`` over an index
        broadcast to (E, F)): the same sums, faster on CPU forward + backward (torch 2.13).
        """
        return inputs.new_zeros(dim_size, inputs.shape[1]).index_add_(0, index, inputs)


class InteractionBlock(nn.Module):
    """One SchNet interaction: the increment Lin(ssp(CFConv(h))) of the node features."""

    def __init__(self, hidden: int, num_rbf: int, num_filters: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(num_rbf, num_filters), ShiftedSoftplus(), nn.Linear(num_filters, num_filters)
        )
        self.conv = CFConv(hidden, num_filters)
        self.act = ShiftedSoftplus()
        self.lin = nn.Linear(hidden, hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.mlp[0], self.mlp[2], self.lin):
            nn.init.xavier_uniform_(lin.weight)
            lin.bias.data.fill_(0)
        self.conv.reset_parameters()

    def forward(self, h: Tensor, edge_index: Tensor, rbf: Tensor, f_cut: Tensor) -> Tensor:
        """``rbf`` (E, G) distance expansion, ``f_cut`` (E,) f_c(d) -> dh (N, H)."""
        filters = self.mlp(rbf) * f_cut.unsqueeze(1)
        return self.lin(self.act(self.conv(h, edge_index, filters)))


class SchNet(nn.Module):
    """The SchNet representation: atomic numbers + periodic edges -> node features.

    Construct with a config, plain keywords, or both (keywords override the config's fields):
    ``SchNet(SchNetConfig(num_layers=3))``, ``SchNet(num_layers=3)``.

    Forward args (those of :class:`fingerprint_pretrain.trainer.model.EquivariantTransformer`):
        z: (N,) int64 atomic numbers.
        edge_index: (2, E) int64, row 0 = neighbour j, row 1 = centre i.
        edge_vec: (E, 3) float, r_j + shift − r_i, Å.

    Returns:
        x: (N, H) scalar features; ``None`` in place of vector features (SchNet has none).
    """

    def __init__(self, cfg: SchNetConfig | None = None, **hyperparameters):
        super().__init__()
        cfg = dataclasses.replace(cfg or SchNetConfig(), **hyperparameters)
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.max_z, cfg.hidden_channels, padding_idx=0)
        self.distance_expansion = GaussianSmearing(cfg.cutoff_upper, cfg.num_rbf)
        self.interactions = nn.ModuleList(
            InteractionBlock(cfg.hidden_channels, cfg.num_rbf, cfg.num_filters)
            for _ in range(cfg.num_layers)
        )

    def forward(self, z: Tensor, edge_index: Tensor, edge_vec: Tensor) -> tuple[Tensor, None]:
        dist = torch.linalg.vector_norm(edge_vec, dim=1)
        rbf = self.distance_expansion(dist)
        # the same for every layer: computed once
        f_cut = cosine_cutoff(dist, 0.0, self.cfg.cutoff_upper)  # f_c(d_ij), (E,)
        h = self.embedding(z)
        for interaction in self.interactions:
            h = h + interaction(h, edge_index, rbf, f_cut)
        return h, None
