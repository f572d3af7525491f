"""Representation models ("backbones") on the store's periodic edges, by name.

Every backbone has the call of :class:`fingerprint_pretrain.trainer.model.EquivariantTransformer`:
``model(z, edge_index, edge_vec) -> (x (N, H), vec (N, 3, H) or None)``, and a config
dataclass with at least ``hidden_channels``, ``head_channels`` and ``cutoff_upper``, so it can
stand in :mod:`trainer.heads`' ``NodeRegressor`` / ``GraphRegressor`` as their
``representation``.

==========  ======================================  =========================================
name        model                                   reference it is tested against
==========  ======================================  =========================================
``et``      :class:`trainer.model.EquivariantTransformer`  torchmd-net's ``TorchMD_ET``
``schnet``  :class:`SchNet` (invariant)             PyG's ``torch_geometric.nn.models.SchNet``
``painn``   :class:`PaiNN` (equivariant)            term-by-term equations; SchNetPack's PaiNN
==========  ======================================  =========================================
"""

from __future__ import annotations

from fingerprint_pretrain.trainer.backbones.painn import PaiNN, PaiNNConfig
from fingerprint_pretrain.trainer.backbones.schnet import SchNet, SchNetConfig
from fingerprint_pretrain.trainer.hyperparameters import BACKBONE_CONFIGS, field_names
from fingerprint_pretrain.trainer.model import EquivariantTransformer, ETConfig
from torch import nn

__all__ = [
    "BACKBONES",
    "PaiNN",
    "PaiNNConfig",
    "SchNet",
    "SchNetConfig",
    "backbone_config",
    "backbone_from_config",
    "backbone_name",
    "build_backbone",
]

_MODEL_CLASSES = {ETConfig: EquivariantTransformer, SchNetConfig: SchNet, PaiNNConfig: PaiNN}
# name -> (config dataclass, model class taking that config); names and configs:
# fingerprint_pretrain.trainer.hyperparameters.BACKBONE_CONFIGS
BACKBONES: dict[str, tuple[type, type[nn.Module]]] = {
    name: (config_cls, _MODEL_CLASSES[config_cls]) for name, config_cls in BACKBONE_CONFIGS.items()
}


def backbone_config(name: str, **hyperparameters):
    """The config dataclass of backbone ``name`` with the given fields set.

    Raises:
        ValueError: unknown name, or a field the backbone does not have (both listed).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown model {name!r}: choose from {', '.join(BACKBONES)}")
    config_cls = BACKBONES[name][0]
    allowed = field_names(config_cls)
    unknown = sorted(set(hyperparameters) - set(allowed))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option(s) {', '.join(unknown)} (options: {', '.join(allowed)})"
        )
    return config_cls(**hyperparameters)


def build_backbone(name: str, **hyperparameters) -> nn.Module:
    """Backbone ``name`` built from keyword hyperparameters (its config's fields)."""
    cfg = backbone_config(name, **hyperparameters)  # first: it names the choices on a bad name
    return BACKBONES[name][1](cfg)


def backbone_name(cfg) -> str:
    """The registry name of a backbone config (``ETConfig`` -> ``"et"``)."""
    for name, (config_cls, _) in BACKBONES.items():
        if type(cfg) is config_cls:
            return name
    raise ValueError(f"not a backbone config: {type(cfg).__name__}")


def backbone_from_config(cfg) -> nn.Module:
    """The backbone a config dataclass describes (``ETConfig`` -> ``EquivariantTransformer``)."""
    return BACKBONES[backbone_name(cfg)][1](cfg)
