"""trainer.hyperparameters: the backbones' config dataclasses are the one source of the model
fields' defaults (TrainConfig's, per model and shared) and of a checkpoint's model_args."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fingerprint_pretrain.trainer import config
from fingerprint_pretrain.trainer.checkpoint import model_args
from fingerprint_pretrain.trainer.config import TrainConfig
from fingerprint_pretrain.trainer.hyperparameters import BACKBONE_CONFIGS, SchNetConfig

ROOT = Path(__file__).resolve().parents[2]
# the model_args keys that are not fields of a backbone's config dataclass
NOT_BACKBONE = ("model", "mode", "out_dim", "cutoff", "max_neighbors")


@pytest.mark.parametrize("name", list(BACKBONE_CONFIGS))
def test_a_default_configuration_builds_the_backbones_own_defaults(name):
    defaults = BACKBONE_CONFIGS[name]().to_dict()  # the dataclass, read directly
    args = model_args(TrainConfig(model=name), 3)
    assert {k: v for k, v in args.items() if k not in NOT_BACKBONE} == {
        k: v for k, v in defaults.items() if k != "cutoff_upper"
    }
    assert args["cutoff"] == defaults["cutoff_upper"] == 8.0
    assert (args["model"], args["out_dim"], args["max_neighbors"]) == (name, 3, 32)


def test_a_default_the_backbones_do_not_share_is_refused(monkeypatch):
    """hidden_channels / head_channels / cutoff take the one default every backbone gives
    them; were one backbone's to differ, the field would have to become a per-model one."""
    assert config._shared_default("cutoff") == 8.0
    monkeypatch.setattr(SchNetConfig, "head_channels", 64)
    with pytest.raises(AssertionError, match="head_channels differ"):
        config._shared_default("head_channels")


def test_the_configuration_imports_no_torch():
    """fp-train's configuration (and so --help) reads the hyperparameters without torch."""
    code = "import sys, fingerprint_pretrain.trainer.config\nprint('torch' in sys.modules)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert proc.stdout.split() == ["False"]
