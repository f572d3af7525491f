"""SchNet against PyG's own SchNet with the same weights; PaiNN against a term-by-term
implementation of the paper's equations (and SchNetPack's PaiNN where installed); both
rotation-invariant (PaiNN's vectors equivariant) on a periodic cell far below twice the cutoff,
invariant to permuting atoms, and drop-in representations of the ET's regressors."""

from __future__ import annotations

import importlib.util
import math
import sys
import types

import numpy as np
import pytest
import torch
from fingerprint_pretrain.trainer.backbones import (
    PaiNN,
    PaiNNConfig,
    SchNet,
    backbone_config,
    backbone_from_config,
    backbone_name,
    build_backbone,
)
from fingerprint_pretrain.trainer.heads import GraphRegressor, NodeRegressor
from fingerprint_pretrain.trainer.model import EquivariantTransformer, ETConfig

from tests.builder.test_neighbors import brute_force

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/trainer/conftest.py


def perturb(module: torch.nn.Module, scale: float = 0.1) -> None:
    """Non-trivial values everywhere (biases start at 0)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def cluster_pairs(pos: torch.Tensor, batch: torch.Tensor, cutoff: float):
    """Every (j, i), i != j, of the same molecule closer than the cutoff (row 0 = j)."""
    d = torch.cdist(pos, pos)
    same = batch[:, None] == batch[None, :]
    j, i = torch.nonzero((d < cutoff) & (d > 0) & same, as_tuple=True)
    return torch.stack([j, i])


def periodic_graph(pos: np.ndarray, cell: np.ndarray, cutoff: float):
    """(edge_index (2, E), shift (E, 3)) of every image pair within the cutoff, by brute-force
    image enumeration (the builder's test oracle), row 0 = neighbour j."""
    pairs = sorted(brute_force(pos, cell, [True] * 3, cutoff))
    edge_index = torch.tensor([[p[1] for p in pairs], [p[0] for p in pairs]])
    shift = torch.tensor([p[2:] for p in pairs], dtype=torch.float64)
    return edge_index, shift


def edge_vectors(pos, cell, edge_index, shift) -> torch.Tensor:
    j, i = edge_index
    return pos[j] + shift @ cell - pos[i]


def random_rotation(seed=0) -> torch.Tensor:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return torch.tensor(q)


# A 3-atom cell of edges 2.5–2.7 Å, skewed, with a 6 Å cutoff: each atom sees ~150 images.
CELL = np.array([[2.5, 0.0, 0.0], [0.8, 2.6, 0.0], [0.3, 0.5, 2.7]])
POS = np.array([[0.0, 0.0, 0.0], [1.3, 1.1, 0.9], [2.1, 0.4, 1.9]])
Z = torch.tensor([14, 8, 8])
CUTOFF = 6.0


# ------------------------------------------------------------------------------------------
# SchNet = PyG's SchNet
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_schnet_equals_pyg_schnet_on_molecules(dtype, tol):
    from torch_geometric.nn.models import SchNet as PygSchNet
    from torch_geometric.nn.models.schnet import ShiftedSoftplus

    torch.manual_seed(0)
    cutoff = 5.0
    z = torch.tensor([6, 1, 1, 8, 7, 1, 6, 6, 1, 16, 8, 1, 1, 6, 26, 1, 1])
    batch = torch.tensor([0] * 10 + [1] * 7)
    pos = (torch.randn(len(z), 3, dtype=torch.float64) * 1.6).to(dtype)

    # PyG's radius graph needs torch-cluster or pyg-lib (not installed): the same graph, all
    # pairs of a molecule within the cutoff, by brute force, with PyG's own distances.
    def radius_graph(pos_, batch_):
        edge_index = cluster_pairs(pos_, batch_, cutoff)
        return edge_index, (pos_[edge_index[0]] - pos_[edge_index[1]]).norm(dim=-1)

    kw = dict(hidden_channels=24, num_filters=20, num_rbf=12, cutoff_upper=cutoff)
    oracle = PygSchNet(
        hidden_channels=24,
        num_filters=20,
        num_interactions=3,
        num_gaussians=12,
        cutoff=cutoff,
        interaction_graph=radius_graph,
    ).to(dtype)
    perturb(oracle)
    for m in oracle.modules():  # PyG rounds log 2 to float32: exact here, for the 1e-10 check
        if isinstance(m, ShiftedSoftplus):
            m.shift = math.log(2.0)
    ours = SchNet(num_layers=3, **kw).to(dtype)
    result = ours.load_state_dict(oracle.state_dict(), strict=False)
    assert result.missing_keys == []  # every weight of ours comes from PyG's model
    captured = {}
    oracle.lin1.register_forward_pre_hook(lambda m, args: captured.update(h=args[0]))
    with torch.no_grad():
        energy_ref = oracle(z, pos, batch)
        edge_index = cluster_pairs(pos, batch, cutoff)
        x, vec = ours(z, edge_index, pos[edge_index[0]] - pos[edge_index[1]])
        # PyG's own readout on our node features
        atomwise = oracle.lin2(oracle.act(oracle.lin1(x)))
        energy = atomwise.new_zeros(2, 1).index_add_(0, batch, atomwise)
    assert vec is None and x.dtype == dtype and edge_index.shape[1] > 50
    torch.testing.assert_close(x, captured["h"], rtol=tol, atol=tol)
    torch.testing.assert_close(energy, energy_ref, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------
# PaiNN = the equations, term by term
# ------------------------------------------------------------------------------------------
def painn_term_by_term(model: PaiNN, z, edge_index, edge_vec):
    """Schütt et al. 2021, eqs. 6–11, one edge and one atom at a time, from the weights only.

    Notation of the paper: s_i scalars (F,), v_i vectors (3, F); φ(s) = W2 SiLU(W1 s + b1) + b2;
    the filter of layer t is the slice [3F t, 3F (t+1)) of Wf rbf(d) + bf, times the cosine
    cutoff; splits in the order (s | vs | vv) for messages and (ss | vv | sv) for updates.
    """
    w = {k: v.detach().double() for k, v in model.state_dict().items()}
    cfg = model.cfg
    f, cutoff, n_rbf = cfg.hidden_channels, cfg.cutoff_upper, cfg.num_rbf
    silu = lambda t: t * torch.sigmoid(t)  # noqa: E731

    # the basis' grid as stored (built in float32, as SchNetPack does): evenly spaced
    if cfg.radial_basis == "gaussian":
        mu, width = w["radial_basis.offsets"].tolist(), w["radial_basis.widths"].tolist()
        np.testing.assert_allclose(mu, np.linspace(0, cutoff, n_rbf), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(width, cutoff / (n_rbf - 1), rtol=1e-6)
    else:
        freq = w["radial_basis.freqs"].tolist()
        np.testing.assert_allclose(freq, np.arange(1, n_rbf + 1) * np.pi / cutoff, rtol=1e-6)

    def rbf(d: float) -> torch.Tensor:
        if cfg.radial_basis == "gaussian":
            terms = [math.exp(-((d - mu[k]) ** 2) / (2 * width[k] ** 2)) for k in range(n_rbf)]
        else:
            terms = [math.sin(freq[k] * d) / d for k in range(n_rbf)]
        return torch.tensor(terms, dtype=torch.float64)

    n = len(z)
    s = [w["embedding.weight"][int(z[a])].clone() for a in range(n)]
    v = [torch.zeros(3, f, dtype=torch.float64) for _ in range(n)]
    for t in range(cfg.num_layers):
        p = f"interactions.{t}.interatomic_context_net."
        # eq. 6-8: messages
        ds = [torch.zeros(f, dtype=torch.float64) for _ in range(n)]
        dv = [torch.zeros(3, f, dtype=torch.float64) for _ in range(n)]
        for e in range(edge_index.shape[1]):
            j, i = int(edge_index[0, e]), int(edge_index[1, e])
            r = edge_vec[e].double()
            d = float(r.norm())
            fc = 0.5 * (math.cos(math.pi * d / cutoff) + 1.0) if d < cutoff else 0.0
            filt = (w["filter_net.weight"] @ rbf(d) + w["filter_net.bias"]) * fc
            filt = filt[3 * f * t : 3 * f * (t + 1)]
            phi = w[p + "1.weight"] @ silu(w[p + "0.weight"] @ s[j] + w[p + "0.bias"])
            phi = phi + w[p + "1.bias"]
            x = phi * filt
            x_s, x_vs, x_vv = x[:f], x[f : 2 * f], x[2 * f :]
            ds[i] = ds[i] + x_s
            for c in range(3):
                dv[i][c] = dv[i][c] + x_vv * v[j][c] + x_vs * (r[c] / d)
        s = [s[a] + ds[a] for a in range(n)]
        v = [v[a] + dv[a] for a in range(n)]
        # eq. 9-11: updates
        p = f"mixing.{t}."
        for a in range(n):
            uv = torch.stack([w[p + "mu_channel_mix.weight"][f:] @ v[a][c] for c in range(3)])
            vv = torch.stack([w[p + "mu_channel_mix.weight"][:f] @ v[a][c] for c in range(3)])
            norm_vv = torch.sqrt((vv**2).sum(dim=0) + cfg.epsilon)
            hidden = silu(
                w[p + "intraatomic_context_net.0.weight"] @ torch.cat([s[a], norm_vv])
                + w[p + "intraatomic_context_net.0.bias"]
            )
            a_all = w[p + "intraatomic_context_net.1.weight"] @ hidden
            a_all = a_all + w[p + "intraatomic_context_net.1.bias"]
            a_ss, a_vv, a_sv = a_all[:f], a_all[f : 2 * f], a_all[2 * f :]
            s[a] = s[a] + a_ss + a_sv * (uv * vv).sum(dim=0)
            v[a] = v[a] + a_vv * uv
    return torch.stack(s), torch.stack(v)


@pytest.mark.parametrize("radial_basis", ["gaussian", "bessel"])
def test_painn_equals_the_equations_term_by_term(radial_basis):
    torch.manual_seed(1)
    cutoff = 4.0
    edge_index, shift = periodic_graph(POS, CELL, cutoff)
    pos, cell = torch.tensor(POS), torch.tensor(CELL)
    edge_vec = edge_vectors(pos, cell, edge_index, shift)
    model = PaiNN(
        hidden_channels=6, num_layers=2, num_rbf=7, cutoff_upper=cutoff, radial_basis=radial_basis
    ).double()
    perturb(model)
    with torch.no_grad():
        s, v = model(Z, edge_index, edge_vec)
    s_ref, v_ref = painn_term_by_term(model, Z, edge_index, edge_vec)
    assert edge_index.shape[1] > 60 and v.abs().max() > 0.1
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(v, v_ref, rtol=1e-10, atol=1e-10)


def schnetpack_modules():
    """SchNetPack's PaiNN, radial bases and cutoff, or skip. SchNetPack is installed without its
    dependencies (they would pull Lightning, Hydra and an older sympy than torch needs), so its
    package ``__init__`` (which imports all of them) is bypassed: only the model files load."""
    if "schnetpack" not in sys.modules:
        spec = importlib.util.find_spec("schnetpack")
        if spec is None:
            pytest.skip("schnetpack not installed (pip install --no-deps schnetpack==2.1.1)")
        package = types.ModuleType("schnetpack")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["schnetpack"] = package
    import schnetpack.nn as snn
    import schnetpack.properties as properties
    from schnetpack.representation.painn import PaiNN as SpkPaiNN

    return SpkPaiNN, snn, properties


@pytest.mark.parametrize("radial_basis", ["gaussian", "bessel"])
def test_painn_equals_schnetpack_painn(radial_basis):
    SpkPaiNN, snn, properties = schnetpack_modules()
    torch.manual_seed(2)
    edge_index, shift = periodic_graph(POS, CELL, CUTOFF)
    edge_vec = edge_vectors(torch.tensor(POS), torch.tensor(CELL), edge_index, shift)
    basis = {"gaussian": snn.GaussianRBF, "bessel": snn.BesselRBF}[radial_basis](10, CUTOFF)
    oracle = SpkPaiNN(
        n_atom_basis=16,
        n_interactions=3,
        radial_basis=basis,
        cutoff_fn=snn.CosineCutoff(CUTOFF),
    ).double()
    perturb(oracle)
    ours = PaiNN(
        hidden_channels=16, num_layers=3, num_rbf=10, cutoff_upper=CUTOFF, radial_basis=radial_basis
    ).double()
    result = ours.load_state_dict(oracle.state_dict(), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == ["cutoff_fn.cutoff"]
    with torch.no_grad():
        out = oracle(
            {
                properties.Z: Z,
                properties.Rij: edge_vec,
                properties.idx_i: edge_index[1],
                properties.idx_j: edge_index[0],
            }
        )
        s, v = ours(Z, edge_index, edge_vec)
    torch.testing.assert_close(s, out["scalar_representation"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(v, out["vector_representation"], rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------
# Symmetries on a periodic cell far below twice the cutoff
# ------------------------------------------------------------------------------------------
def small_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(3)
    models = {
        "schnet": SchNet(hidden_channels=16, num_filters=16, num_layers=2, cutoff_upper=CUTOFF),
        "painn": PaiNN(hidden_channels=16, num_layers=2, cutoff_upper=CUTOFF),
    }
    for m in models.values():
        perturb(m)
    return {k: m.double().eval() for k, m in models.items()}


# one atom in a skewed 2.5 Å cell: every edge joins the atom to an image of itself (j == i)
ONE_ATOM = (np.array([[0.0, 0.0, 0.0]]), np.array([[2.5, 0, 0], [0.7, 2.4, 0], [0.4, 0.9, 2.6]]))


@pytest.mark.parametrize("cell_name", ["3-atom", "1-atom"])
@pytest.mark.parametrize("name", ["schnet", "painn"])
def test_rotation_invariance_and_vector_equivariance_on_a_small_cell(name, cell_name):
    model = small_models()[name]
    pos_np, cell_np, z = (POS, CELL, Z) if cell_name == "3-atom" else (*ONE_ATOM, Z[:1])
    edge_index, shift = periodic_graph(pos_np, cell_np, CUTOFF)
    assert edge_index.shape[1] > 40 * len(z) ** 2  # many images: a box far below 2 × cutoff
    pos, cell = torch.tensor(pos_np), torch.tensor(cell_np)
    rot = random_rotation()
    with torch.no_grad():
        x, vec = model(z, edge_index, edge_vectors(pos, cell, edge_index, shift))
        # rotate the structure (positions and lattice), rebuild the vectors from it
        x_r, vec_r = model(
            z, edge_index, edge_vectors(pos @ rot.T, cell @ rot.T, edge_index, shift)
        )
        # self-image edges are neighbours like any other (nothing drops j == i by index)
        alone, _ = model(z, edge_index[:, :0], torch.zeros(0, 3, dtype=torch.float64))
    assert x.abs().max() > 0.1 and (x - alone).abs().max() > 0.1
    torch.testing.assert_close(x_r, x, rtol=1e-10, atol=1e-10)
    if name == "painn":
        if cell_name == "3-atom":  # (one atom: its images cancel, vec = 0 by symmetry)
            assert vec.abs().max() > 0.1
        torch.testing.assert_close(
            vec_r, torch.einsum("ab,nbh->nah", rot, vec), rtol=1e-9, atol=1e-10
        )


@pytest.mark.parametrize("name", ["schnet", "painn"])
def test_invariance_to_permuting_atoms_and_edges(name):
    model = small_models()[name]
    edge_index, shift = periodic_graph(POS, CELL, CUTOFF)
    pos, cell = torch.tensor(POS), torch.tensor(CELL)
    perm = torch.tensor([2, 0, 1])  # new atom k is old atom perm[k]
    new_of_old = torch.argsort(perm)
    edge_order = torch.randperm(edge_index.shape[1], generator=torch.Generator().manual_seed(0))
    edge_index_p = new_of_old[edge_index][:, edge_order]
    with torch.no_grad():
        x, vec = model(Z, edge_index, edge_vectors(pos, cell, edge_index, shift))
        x_p, vec_p = model(
            Z[perm], edge_index_p, edge_vectors(pos[perm], cell, edge_index_p, shift[edge_order])
        )
    torch.testing.assert_close(x_p, x[perm], rtol=1e-10, atol=1e-10)
    if name == "painn":
        torch.testing.assert_close(vec_p, vec[perm], rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------
# Drop-in for the ET
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["schnet", "painn"])
def test_stands_in_for_the_et_in_both_regressors_under_bfloat16(name):
    """As ``representation`` of the trainer's NodeRegressor / GraphRegressor (their call), with
    gradients everywhere, and under bfloat16 autocast (as fp-train runs) close to float32."""
    torch.manual_seed(4)
    et = ETConfig(hidden_channels=16, num_layers=1, num_rbf=8, num_heads=2, head_channels=16)
    z = torch.tensor([6, 1, 1, 8, 7, 1, 6, 8])
    batch = torch.tensor([0] * 5 + [1] * 3)
    pos = torch.randn(8, 3) * 1.5
    edge_index = cluster_pairs(pos, batch, 5.0)
    edge_vec = pos[edge_index[0]] - pos[edge_index[1]]
    for regressor, shape in ((GraphRegressor(et, 2), (2, 2)), (NodeRegressor(et, 3), (8, 3))):
        regressor.representation = build_backbone(name, hidden_channels=16, cutoff_upper=5.0)
        exact = regressor(z, edge_index, edge_vec, batch, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = regressor(z, edge_index, edge_vec, batch, 2)
        mixed.float().sum().backward()
        assert exact.shape == mixed.shape == shape
        for p_name, p in regressor.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), p_name
        torch.testing.assert_close(mixed.float(), exact, rtol=0.05, atol=0.05)


def test_registry_builds_by_name_and_rejects_unknown_options():
    assert isinstance(build_backbone("et", hidden_channels=16, num_heads=2), EquivariantTransformer)
    schnet = build_backbone("schnet", num_layers=2)
    assert isinstance(schnet, SchNet) and len(schnet.interactions) == 2
    assert backbone_config("painn", num_rbf=8).num_rbf == 8
    assert SchNet(backbone_config("schnet", num_layers=1), num_filters=8).cfg.num_filters == 8
    cfg = PaiNNConfig(num_layers=1)
    assert backbone_name(cfg) == "painn" and backbone_name(ETConfig()) == "et"
    assert isinstance(backbone_from_config(cfg), PaiNN)
    with pytest.raises(ValueError, match="unknown model 'mace'.*et, schnet, painn"):
        build_backbone("mace")
    with pytest.raises(ValueError, match="'painn' has no option.*num_heads.*hidden_channels"):
        build_backbone("painn", num_heads=4)
    with pytest.raises(ValueError, match="radial_basis"):
        PaiNN(radial_basis="slater")
