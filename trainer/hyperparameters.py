"""Every backbone's hyperparameters, listed once: one config dataclass per backbone.

These dataclasses are the one source of each backbone's fields and defaults. The models take
them (:class:`fingerprint_pretrain.trainer.model.EquivariantTransformer` an :class:`ETConfig`,
``trainer.backbones``' ``SchNet`` a :class:`SchNetConfig`, ``PaiNN`` a :class:`PaiNNConfig`);
``trainer.config`` derives from them the per-model defaults of ``fp-train``'s model flags
(``MODEL_DEFAULTS``) and the defaults every backbone shares (``hidden_channels``,
``head_channels``, ``cutoff``); ``trainer.checkpoint`` writes a checkpoint's ``model_args``
from them and rebuilds models from those. The module imports neither torch nor PyTorch
Geometric, so the configuration (and ``fp-train --help``) can read it for nothing.

One name differs between the configuration and the dataclasses: the model's radial cutoff is
``cutoff`` in TrainConfig and in a checkpoint's ``model_args`` (checkpoint format 2), and
``cutoff_upper`` in the dataclasses (torchmd-net's name); :data:`RENAMED` maps the one to the
other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = [
    "BACKBONE_CONFIGS",
    "ETConfig",
    "PaiNNConfig",
    "RENAMED",
    "SchNetConfig",
    "field_names",
]


@dataclass
class ETConfig:
    """Hyperparameters of the equivariant transformer (defaults: the paper's Table A.1).

    Attributes:
        hidden_channels: width of node features (and of the head's hidden layers).
        num_layers: attention layers.
        num_rbf: radial basis functions (ExpNormal).
        trainable_rbf: train the RBF means and widths.
        num_heads: attention heads (must divide ``hidden_channels``).
        distance_influence: where the RBF filter enters attention: keys, values, both, none.
        cutoff_lower, cutoff_upper: radial cutoffs, Å.
        max_z: embedding table size (atomic numbers 0 … max_z − 1).
        neighbor_embedding: the initial neighbour-type embedding step (torchmd-net's name).
        self_loops: add a zero-length (i, i) edge per atom, as torchmd-net does.
        vector_cutoff: apply the cutoff to vector messages too (torchmd-net option).
        head_channels: hidden width of the MLP heads (authors: 128).
    """

    hidden_channels: int = 128
    num_layers: int = 8
    num_rbf: int = 50
    trainable_rbf: bool = True
    num_heads: int = 8
    distance_influence: str = "both"
    cutoff_lower: float = 0.0
    cutoff_upper: float = 8.0
    max_z: int = 100
    neighbor_embedding: bool = True
    self_loops: bool = False
    vector_cutoff: bool = False
    head_channels: int = 128

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SchNetConfig:
    """Hyperparameters of SchNet (defaults: PyG's, with the store's 8 Å cutoff).

    Attributes:
        hidden_channels: width H of node features (and of the head's input).
        num_filters: width F of the continuous filters.
        num_layers: interaction blocks.
        num_rbf: Gaussians G of the distance expansion (evenly spaced on [0, cutoff_upper]).
        cutoff_upper: cosine cutoff radius, Å (edges at or beyond it contribute nothing).
        max_z: embedding table size (atomic numbers 0 … max_z − 1; 0 is a zero padding row).
        head_channels: hidden width of the MLP heads that sit on this representation.
    """

    hidden_channels: int = 128
    num_filters: int = 128
    num_layers: int = 6
    num_rbf: int = 50
    cutoff_upper: float = 8.0
    max_z: int = 100
    head_channels: int = 128

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PaiNNConfig:
    """Hyperparameters of PaiNN (defaults: the paper's QM9 model, with the store's 8 Å cutoff).

    Attributes:
        hidden_channels: width F of scalar and vector features (and of the head's input).
        num_layers: message + update blocks.
        num_rbf: radial basis functions R.
        radial_basis: ``gaussian`` (SchNetPack's default) or ``bessel`` (the paper's sinc).
        cutoff_upper: cosine cutoff radius, Å (edges at or beyond it contribute nothing).
        max_z: embedding table size (atomic numbers 0 … max_z − 1).
        epsilon: added under the square root of ‖V v‖ (its gradient at v = 0 stays finite).
        head_channels: hidden width of the MLP heads that sit on this representation.
    """

    hidden_channels: int = 128
    num_layers: int = 3
    num_rbf: int = 20
    radial_basis: str = "gaussian"
    cutoff_upper: float = 8.0
    max_z: int = 100
    epsilon: float = 1e-8
    head_channels: int = 128

    def to_dict(self) -> dict:
        return asdict(self)


# The backbones by the name ``--model`` gives them (trainer.backbones.BACKBONES pairs each
# with its model class), in the order fp-train lists them.
BACKBONE_CONFIGS: dict[str, type] = {
    "et": ETConfig,
    "schnet": SchNetConfig,
    "painn": PaiNNConfig,
}

# TrainConfig / model_args name -> the config dataclasses' name, where they differ.
RENAMED = {"cutoff": "cutoff_upper"}


def field_names(config_cls: type) -> tuple[str, ...]:
    """The fields of a backbone's config dataclass, in order."""
    return tuple(f.name for f in fields(config_cls))
