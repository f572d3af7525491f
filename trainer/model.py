"""TorchMD-Net's equivariant transformer (ET) on precomputed periodic edges.

The architecture is that of ``torchmdnet.models.torchmd_et.TorchMD_ET`` (Thölke & De Fabritiis,
ICLR 2022; torchmd-net 3.x), written here so that it runs on the store's *periodic* edges:
torchmd-net's own neighbour search is minimum-image only and fails on small crystal cells. The
forward pass takes the edges and their vectors (image shifts already applied) instead of
searching them. Parameter names follow torchmd-net's, so its representation weights load by
name (:func:`load_torchmd_net_weights`), and ``tests/trainer/test_model.py`` proves the node
features equal to the package's ``TorchMD_ET`` on the same graph.

Conventions: ``edge_index[0]`` = neighbour j (source), ``edge_index[1]`` = centre i (target,
where attention messages are summed); ``edge_vec = pos[j] + shift @ cell - pos[i]``, Å.

Self-loops: torchmd-net adds an (i, i) edge of length 0 for every atom (``self_loops=True``
reproduces it); the paper's authors dropped them (the default here, as their code ran).
"""

from __future__ import annotations

import math

import torch
from fingerprint_pretrain.trainer.hyperparameters import (
    ETConfig,
)  # (defined there with the other backbones')
from torch import Tensor, nn

__all__ = [
    "ETConfig",
    "EquivariantTransformer",
    "load_torchmd_net_weights",
]


def cosine_cutoff(dist: Tensor, lower: float, upper: float) -> Tensor:
    """½(cos(π d / upper) + 1) for d < upper (torchmd-net's CosineCutoff, both branches)."""
    if lower > 0:
        phase = math.pi * (2 * (dist - lower) / (upper - lower) + 1.0)
        return 0.5 * (torch.cos(phase) + 1.0) * (dist < upper) * (dist > lower)
    return 0.5 * (torch.cos(dist * math.pi / upper) + 1.0) * (dist < upper)


class ExpNormalRBF(nn.Module):
    """f_c(d) · exp(−β (exp(α (c_lo − d)) − μ)²), α = 5 / (c_up − c_lo); μ, β as in PhysNet.

    Output (E, num_rbf).
    """

    def __init__(self, lower: float, upper: float, num_rbf: int, trainable: bool):
        super().__init__()
        self.lower, self.upper, self.num_rbf = lower, upper, num_rbf
        self.alpha = 5.0 / (upper - lower)
        means, betas = self._initial()
        if trainable:
            self.means = nn.Parameter(means)
            self.betas = nn.Parameter(betas)
        else:
            self.register_buffer("means", means)
            self.register_buffer("betas", betas)

    def _initial(self) -> tuple[Tensor, Tensor]:
        start = torch.exp(torch.scalar_tensor(-self.upper + self.lower))
        means = torch.linspace(start, 1, self.num_rbf)
        betas = torch.full((self.num_rbf,), (2 / self.num_rbf * (1 - start)) ** -2)
        return means, betas

    def reset_parameters(self) -> None:
        means, betas = self._initial()
        self.means.data.copy_(means)
        self.betas.data.copy_(betas)

    def forward(self, dist: Tensor) -> Tensor:
        dist = dist.unsqueeze(-1)
        shape = torch.exp(self.alpha * (self.lower - dist)) - self.means
        return cosine_cutoff(dist, 0.0, self.upper) * torch.exp(-self.betas * shape**2)


class NeighborEmbedding(nn.Module):
    """x_i ← combine([x_i, Σ_j W(d_ij) · emb(z_j)]), self-loops excluded (torchmd-net's)."""

    def __init__(self, hidden: int, num_rbf: int, lower: float, upper: float, max_z: int):
        super().__init__()
        self.embedding = nn.Embedding(max_z, hidden)
        self.distance_proj = nn.Linear(num_rbf, hidden)
        self.combine = nn.Linear(hidden * 2, hidden)
        self.lower, self.upper = lower, upper
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.embedding.reset_parameters()
        nn.init.xavier_uniform_(self.distance_proj.weight)
        nn.init.xavier_uniform_(self.combine.weight)
        self.distance_proj.bias.data.fill_(0)
        self.combine.bias.data.fill_(0)

    def forward(self, z, x, edge_index, dist, rbf) -> Tensor:
        keep = edge_index[0] != edge_index[1]
        edge_index, dist, rbf = edge_index[:, keep], dist[keep], rbf[keep]
        weight = self.distance_proj(rbf) * cosine_cutoff(dist, self.lower, self.upper)[:, None]
        # As torchmd-net: messages from edge_index[1] are summed at edge_index[0] (the same as
        # the other direction for a symmetric edge list).
        msg = weight * self.embedding(z).index_select(0, edge_index[1])
        # (zeros in the message's dtype: under autocast it may differ from x's)
        x_neighbors = x.new_zeros(x.shape, dtype=msg.dtype).index_add(0, edge_index[0], msg)
        return self.combine(torch.cat([x, x_neighbors.to(x.dtype)], dim=1))


class EquivariantAttention(nn.Module):
    """One ET layer: multi-head attention over edges updating scalar (N, H) and vector
    (N, 3, H) features; returns the increments (dx, dvec).

    The update of TorchMD-Net's equivariant transformer (Thölke & De Fabritiis, ICLR 2022;
    torchmd-net's ``EquivariantMultiHeadAttention``), as :meth:`forward` computes it
    (the labels (A1) ... (U2) mark the lines). Shapes: N atoms, E edges (j -> i: j =
    ``edge_index[0]``, i = ``edge_index[1]``), H = ``hidden_channels``, M = ``num_heads``,
    D = H / M, R = ``num_rbf``; x (N, H) scalar and v (N, 3, H) vector features; d_ij (E,)
    edge lengths, Å; r̂_ij (E, 3) unit edge vectors; e_ij = rbf(d_ij) (E, R) the ExpNormal
    expansion; φ(d) = ½ (cos(π d / cutoff_upper) + 1) for d < cutoff_upper, else 0 (the
    cosine cutoff with cutoff_lower 0, the default, :func:`cosine_cutoff`; (E,))::

              x̃ = LayerNorm(x)
              q_i = W_q x̃_i,  k_j = W_k x̃_j  (each (N, M, D));  s_j = W_v x̃_j (N, M, 3D)
              U1 v, U2 v, U3 v = split(W_u v)                      (each (N, 3, H); no bias)
              D^K_ij = SiLU(W_dk e_ij) (E, H),  D^V_ij = SiLU(W_dv e_ij) (E, 3H)   (distance filter)
        (A1)  A_ij = SiLU(Σ_D q_i ∘ k_j ∘ D^K_ij) · φ(d_ij)      (E, M)  attention weights
        (A2)  s^1_ij, s^2_ij, s^3_ij = split(s_j ∘ D^V_ij)        (each (E, M, D))
        (M1)  y_i = Σ_j A_ij s^1_ij                              (N, H)  scalar messages
        (M2)  w_i = Σ_j (v_j ∘ s^2_ij + s^3_ij r̂_ij)             (N, 3, H) vector messages
        (U1)  o^1, o^2, o^3 = split(W_o y)                        (each (N, H))
              Δx_i = o^2_i ∘ <U1 v_i, U2 v_i> + o^3_i            (N, H)  (<.,.>: sum over xyz)
        (U2)  Δv_i = o^1_i ∘ U3 v_i + w_i                        (N, 3, H)

    and :class:`EquivariantTransformer` adds them: x ← x + Δx, v ← v + Δv. Options:
    ``distance_influence`` drops D^K ("values"), D^V ("keys") or both ("none");
    ``vector_cutoff`` moves φ(d_ij) from A_ij onto s_j ∘ D^V_ij (torchmd-net's option).
    Parameter names are torchmd-net's: W_q ``q_proj``, W_k ``k_proj``, W_v ``v_proj``, W_u
    ``vec_proj``, W_o ``o_proj``, W_dk ``dk_proj``, W_dv ``dv_proj``.
    """

    def __init__(self, cfg: ETConfig):
        super().__init__()
        h = cfg.hidden_channels
        if h % cfg.num_heads:
            raise ValueError(f"hidden_channels {h} not divisible by num_heads {cfg.num_heads}")
        self.hidden, self.heads, self.head_dim = h, cfg.num_heads, h // cfg.num_heads
        self.lower, self.upper = cfg.cutoff_lower, cfg.cutoff_upper
        self.vector_cutoff = cfg.vector_cutoff
        self.layernorm = nn.LayerNorm(h)
        self.act = nn.SiLU()
        self.attn_activation = nn.SiLU()
        self.q_proj = nn.Linear(h, h)
        self.k_proj = nn.Linear(h, h)
        self.v_proj = nn.Linear(h, h * 3)
        self.o_proj = nn.Linear(h, h * 3)
        self.vec_proj = nn.Linear(h, h * 3, bias=False)
        influence = cfg.distance_influence
        self.dk_proj = nn.Linear(cfg.num_rbf, h) if influence in ("keys", "both") else None
        self.dv_proj = nn.Linear(cfg.num_rbf, h * 3) if influence in ("values", "both") else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.layernorm.reset_parameters()
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.dk_proj, self.dv_proj):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                lin.bias.data.fill_(0)
        nn.init.xavier_uniform_(self.vec_proj.weight)

    def forward(self, x, vec, edge_index, f_cut, rbf, unit_vec) -> tuple[Tensor, Tensor]:
        """One layer (the class docstring's equations). ``x`` (N, H), ``vec`` (N, 3, H);
        ``f_cut`` (E,) φ(d_ij), the cosine cutoff of each edge's length; ``rbf`` (E, R)
        e_ij; ``unit_vec`` (E, 3) r̂_ij. Returns (Δx (N, H), Δv (N, 3, H))."""
        n, heads, hd = x.shape[0], self.heads, self.head_dim
        x = self.layernorm(x)
        q = self.q_proj(x).reshape(-1, heads, hd)
        k = self.k_proj(x).reshape(-1, heads, hd)
        v = self.v_proj(x).reshape(-1, heads, hd * 3)
        vec1, vec2, vec3 = torch.split(self.vec_proj(vec), self.hidden, dim=-1)  # U1 v, U2 v, U3 v
        vec_dot = (vec1 * vec2).sum(dim=1)  # <U1 v, U2 v> (N, H)
        vec = vec.reshape(-1, 3, heads, hd)

        src, dst = edge_index[0], edge_index[1]  # j, i
        q_i, k_j = q.index_select(0, dst), k.index_select(0, src)
        v_j, vec_j = v.index_select(0, src), vec.index_select(0, src)
        if self.dk_proj is not None:  # (A1) with the key filter D^K
            dk = self.act(self.dk_proj(rbf)).reshape(-1, heads, hd)
            attn = (q_i * k_j * dk).sum(dim=-1)
        else:
            attn = (q_i * k_j).sum(dim=-1)
        attn = self.attn_activation(attn)
        f_cut = f_cut.unsqueeze(1)
        if self.vector_cutoff:
            v_j = v_j * f_cut.unsqueeze(2)
        else:
            attn = attn * f_cut  # (A1): A_ij (E, M)
        if self.dv_proj is not None:  # (A2) with the value filter D^V
            v_j = v_j * self.act(self.dv_proj(rbf)).reshape(-1, heads, hd * 3)
        s_msg, vec_gate, vec_dir = torch.split(v_j, hd, dim=2)  # (A2): s^1, s^2, s^3
        s_msg = s_msg * attn.unsqueeze(2)  # (M1) A_ij s^1_ij
        # (M2) v_j ∘ s^2_ij + s^3_ij r̂_ij
        v_msg = vec_j * vec_gate.unsqueeze(1) + vec_dir.unsqueeze(1) * unit_vec[:, :, None, None]

        # Σ_j at each centre i; accumulate in each message's own dtype (they differ under
        # autocast)
        s_out = s_msg.new_zeros(n, heads, hd).index_add_(0, dst, s_msg)
        v_out = v_msg.new_zeros(n, 3, heads, hd).index_add_(0, dst, v_msg)
        s_out = s_out.reshape(-1, self.hidden)  # y (N, H)
        v_out = v_out.reshape(-1, 3, self.hidden)  # w (N, 3, H)
        o1, o2, o3 = torch.split(self.o_proj(s_out), self.hidden, dim=1)  # (U1)
        return vec_dot * o2 + o3, vec3 * o1.unsqueeze(1) + v_out  # (U1) Δx, (U2) Δv


class EquivariantTransformer(nn.Module):
    """The ET representation: atomic numbers + edges -> node features.

    Forward args:
        z: (N,) int64 atomic numbers.
        edge_index: (2, E) int64, row 0 = neighbour j, row 1 = centre i.
        edge_vec: (E, 3) float, r_j + shift − r_i, Å (lengths must be < cutoff_upper).

    Returns:
        x: (N, H) scalar features; vec: (N, 3, H) vector features.
    """

    def __init__(self, cfg: ETConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_channels
        self.embedding = nn.Embedding(cfg.max_z, h)
        self.distance_expansion = ExpNormalRBF(
            cfg.cutoff_lower, cfg.cutoff_upper, cfg.num_rbf, cfg.trainable_rbf
        )
        self.neighbor_embedding = (
            NeighborEmbedding(h, cfg.num_rbf, cfg.cutoff_lower, cfg.cutoff_upper, cfg.max_z)
            if cfg.neighbor_embedding
            else None
        )
        self.attention_layers = nn.ModuleList(
            EquivariantAttention(cfg) for _ in range(cfg.num_layers)
        )
        self.out_norm = nn.LayerNorm(h)

    def forward(self, z: Tensor, edge_index: Tensor, edge_vec: Tensor) -> tuple[Tensor, Tensor]:
        n = z.shape[0]
        if self.cfg.self_loops:
            loops = torch.arange(n, device=z.device)
            edge_index = torch.cat([edge_index, torch.stack([loops, loops])], dim=1)
            edge_vec = torch.cat([edge_vec, edge_vec.new_zeros(n, 3)])
        dist = torch.linalg.vector_norm(edge_vec, dim=1)
        # zero-length (self-loop) vectors stay zero instead of dividing by 0
        unit_vec = edge_vec / torch.where(dist > 0, dist, torch.ones_like(dist)).unsqueeze(1)
        rbf = self.distance_expansion(dist)
        x = self.embedding(z)
        if self.neighbor_embedding is not None:
            x = self.neighbor_embedding(z, x, edge_index, dist, rbf)
        vec = torch.zeros(n, 3, x.shape[1], dtype=x.dtype, device=x.device)
        # φ(d_ij) (E,), the same for every layer: computed once
        f_cut = cosine_cutoff(dist, self.cfg.cutoff_lower, self.cfg.cutoff_upper)
        for layer in self.attention_layers:
            dx, dvec = layer(x, vec, edge_index, f_cut, rbf, unit_vec)
            x = x + dx
            vec = vec + dvec
        return self.out_norm(x), vec


def load_torchmd_net_weights(target: EquivariantTransformer, state: dict[str, Tensor]) -> list[str]:
    """Copy a torchmd-net ``TorchMD_ET`` state dict (optionally prefixed, e.g.
    ``representation_model.`` in its checkpoints) into ``target``.

    Returns the keys of ``target`` that were not found. Raises on shape mismatch.
    """
    prefixes = ("model.representation_model.", "representation_model.", "")
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                mapped[key[len(prefix) :]] = value
                break
    own = target.state_dict()
    missing = []
    for key, param in own.items():
        if key not in mapped:
            missing.append(key)
            continue
        if mapped[key].shape != param.shape:
            raise ValueError(f"{key}: shape {tuple(mapped[key].shape)} != {tuple(param.shape)}")
        own[key] = mapped[key].to(param.dtype)
    target.load_state_dict(own)
    return missing
