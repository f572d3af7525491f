"""Our ET equals torchmd-net's TorchMD_ET (the package, installed as a test oracle) on the same
graph, loads its weights by name, and is rotation-equivariant on periodic crystals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fingerprint_pretrain.trainer.heads import GraphRegressor
from fingerprint_pretrain.trainer.model import (
    EquivariantTransformer,
    ETConfig,
    load_torchmd_net_weights,
)

torch.set_default_dtype(torch.float32)


def torchmd_et(cfg: ETConfig):
    et_module = pytest.importorskip("torchmdnet.models.torchmd_et")
    return et_module.TorchMD_ET(
        hidden_channels=cfg.hidden_channels,
        num_layers=cfg.num_layers,
        num_rbf=cfg.num_rbf,
        rbf_type="expnorm",
        trainable_rbf=cfg.trainable_rbf,
        activation="silu",
        attn_activation="silu",
        neighbor_embedding=cfg.neighbor_embedding,
        num_heads=cfg.num_heads,
        distance_influence=cfg.distance_influence,
        cutoff_lower=cfg.cutoff_lower,
        cutoff_upper=cfg.cutoff_upper,
        max_z=cfg.max_z,
        max_num_neighbors=64,
        dtype=torch.float64,
    )


def all_pairs(pos: torch.Tensor, cutoff: float):
    """Every (j, i), i != j, closer than the cutoff, in our convention (row 0 = j)."""
    d = torch.cdist(pos, pos)
    j, i = torch.nonzero((d < cutoff) & (d > 0), as_tuple=True)
    return torch.stack([j, i]), pos[j] - pos[i]


@pytest.mark.parametrize("influence", ["both", "keys", "values", "none"])
def test_equals_torchmd_et_on_a_molecule(influence):
    torch.manual_seed(0)
    cfg = ETConfig(
        hidden_channels=32,
        num_layers=3,
        num_rbf=16,
        num_heads=4,
        cutoff_upper=5.0,
        distance_influence=influence,
        self_loops=True,
    )
    oracle = torchmd_et(cfg).eval()
    for p in oracle.parameters():  # non-trivial values everywhere (biases start at 0)
        p.data.add_(0.05 * torch.randn_like(p))
    ours = EquivariantTransformer(cfg).double().eval()
    missing = load_torchmd_net_weights(ours, oracle.state_dict())
    assert missing == []
    z = torch.tensor([6, 1, 1, 8, 7, 1, 6, 6, 1, 16])
    pos = torch.randn(10, 3, dtype=torch.float64) * 1.6
    batch = torch.zeros(10, dtype=torch.long)
    with torch.no_grad():
        x_ref, vec_ref, *_ = oracle(z, pos, batch)
        edge_index, edge_vec = all_pairs(pos, cfg.cutoff_upper)
        x, vec = ours(z, edge_index, edge_vec)
    # float64 on both sides: only summation order differs
    torch.testing.assert_close(x, x_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(vec, vec_ref, rtol=1e-10, atol=1e-10)


def test_loads_prefixed_checkpoint_keys_and_rejects_wrong_shapes():
    cfg = ETConfig(hidden_channels=16, num_layers=1, num_rbf=8, num_heads=2, cutoff_upper=5.0)
    src = EquivariantTransformer(cfg)
    dst = EquivariantTransformer(cfg)
    state = {f"representation_model.{k}": v for k, v in src.state_dict().items()}
    assert load_torchmd_net_weights(dst, state) == []
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        torch.testing.assert_close(a, b)
    wide = EquivariantTransformer(
        ETConfig(hidden_channels=32, num_layers=1, num_rbf=8, num_heads=2, cutoff_upper=5.0)
    )
    with pytest.raises(ValueError, match="shape"):
        load_torchmd_net_weights(dst, wide.state_dict())


def random_rotation(seed=0):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return torch.tensor(q, dtype=torch.float32)


def test_periodic_crystal_invariance_and_equivariance():
    """On a small periodic cell (where minimum-image codes fail): scalar outputs invariant and
    vector features equivariant under rotation of the edge vectors."""
    from fingerprint_pretrain.builder.neighbors import neighbour_list

    cell = np.array([[2.9, 0, 0], [1.2, 2.6, 0], [0.4, 0.3, 3.1]])
    pos = np.array([[0.0, 0.0, 0.0], [1.5, 1.1, 1.4]])
    nl = neighbour_list(pos, cell, [True] * 3, 6.0)
    edge_index = torch.tensor(nl.edge_index)
    edge_vec = torch.tensor(nl.edge_vectors(pos, cell), dtype=torch.float32)
    z = torch.tensor([14, 8])
    torch.manual_seed(1)
    cfg = ETConfig(hidden_channels=16, num_layers=2, num_rbf=8, num_heads=2, cutoff_upper=6.0)
    model = GraphRegressor(cfg).eval()
    rot = random_rotation()
    batch = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        y = model(z, edge_index, edge_vec, batch, 1)
        y_rot = model(z, edge_index, edge_vec @ rot.T, batch, 1)
        x, vec = model.representation(z, edge_index, edge_vec)
        x_r, vec_r = model.representation(z, edge_index, edge_vec @ rot.T)
    torch.testing.assert_close(y, y_rot, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x, x_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.einsum("ab,nbh->nah", rot, vec), vec_r, rtol=1e-4, atol=1e-5)
    assert nl.num_edges > 50  # many images of two atoms: a box far below twice the cutoff


def test_runs_under_bfloat16_autocast_close_to_float32():
    """Mixed precision (as fp-train uses on GPUs and bf16-capable CPUs): no dtype clashes in
    the scatter sums, gradients flow, outputs close to float32."""
    torch.manual_seed(0)
    cfg = ETConfig(hidden_channels=32, num_layers=2, num_rbf=16, num_heads=4, cutoff_upper=5.0)
    model = GraphRegressor(cfg)
    z = torch.tensor([6, 1, 1, 8, 7, 1])
    pos = torch.randn(6, 3) * 1.5
    edge_index, edge_vec = all_pairs(pos, cfg.cutoff_upper)
    batch = torch.zeros(6, dtype=torch.long)
    exact = model(z, edge_index, edge_vec, batch, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(z, edge_index, edge_vec, batch, 1)
    mixed.float().sum().backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for p in model.parameters()
        if p.requires_grad
    )
    torch.testing.assert_close(mixed.float(), exact, rtol=0.05, atol=0.05)
