"""TrainConfig refuses what its annotations do not allow, naming the field; every field carries
its help; a configuration survives a round trip through a JSON or YAML file
(``load_config_file``, what ``fp-train --config`` reads), whose unknown keys are refused naming
the file and the key; YAML 1.1's numeric strings (``3e-4``) are read as numbers."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest
import yaml
from fingerprint_pretrain.trainer.config import ConfigError, TrainConfig, load_config_file


def _literal_fields() -> dict[str, tuple]:
    """Field name -> allowed values, read from the annotations (independently of the
    checker: ``X | None`` unwrapped by hand)."""
    out = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        for arg in (hint, *typing.get_args(hint)):
            if typing.get_origin(arg) is typing.Literal:
                out[name] = typing.get_args(arg)
    return out


def test_every_literal_field_refuses_other_values_naming_the_field():
    literals = _literal_fields()
    assert {"mode", "model", "label_scaling", "target_scaling", "radial_basis"} <= set(literals)
    for name, allowed in literals.items():
        with pytest.raises(ConfigError) as err:
            TrainConfig(**{name: "not-" + str(allowed[0])})
        assert err.value.name == name
        assert all(str(v) in err.value.problem for v in allowed), (name, err.value.problem)
        assert "\n" not in str(err.value)


def test_every_field_has_help_and_a_unit_slot():
    for f in dataclasses.fields(TrainConfig):
        assert isinstance(f.metadata.get("help"), str) and len(f.metadata["help"]) > 10, f.name
        assert f.metadata.get("unit") is None or f.metadata["unit"].strip(), f.name


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_round_trip_through_a_config_file(suffix, tmp_path):
    cfg = TrainConfig.defaults("finetune").updated(
        store="s.lmdb", labels=["band_gap"], seed=7, lr=3e-4, min_lr=1e-6, max_train=12
    )
    path = tmp_path / f"run{suffix}"
    dump = json.dumps if suffix == ".json" else yaml.safe_dump
    path.write_text(dump(cfg.to_dict()))
    again = TrainConfig(**load_config_file(path))
    assert again == cfg
    assert isinstance(again.min_lr, float) and again.min_lr == 1e-6  # JSON writes 1e-06


def test_config_file_keys_with_dashes_and_empty_files(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch-size: 4\nlabel_scaling: global\n")
    assert load_config_file(path) == {"batch_size": 4, "label_scaling": "global"}
    path.write_text("")
    assert load_config_file(path) == {}


def test_numeric_strings_of_a_yaml_file_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "lr: 3e-4\nepochs: 1e1\nmax_train: '12'\nsplit: [0.6, 2e-1, 2e-1]\nstore: 1e3\n"
    )
    assert yaml.safe_load(path.read_text())["lr"] == "3e-4"  # YAML 1.1: a string
    keys = load_config_file(path)
    assert keys == {"lr": 3e-4, "epochs": 10, "max_train": 12, "split": [0.6, 0.2, 0.2]} | {
        "store": "1e3"  # a string field keeps its text
    }
    assert type(keys["epochs"]) is int and type(keys["lr"]) is float
    assert TrainConfig.defaults("pretrain").updated(**keys).lr == 3e-4


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("c.json", '{"epochs": 3, "max_vall": 5}', "unknown configuration key 'max_vall'"),
        ("c.yaml", "epochs: 3\nhiden_channels: 8\n", "unknown configuration key 'hiden_channels'"),
        ("c.yaml", "- epochs\n", "expected a mapping"),
        ("c.json", '{"epochs": 3,', "not valid JSON"),
        ("c.yaml", "epochs: [3\n", "not valid YAML (line"),
        ("c.yaml", "lr: abc\n", "lr must be a number, got 'abc'"),
        ("c.yaml", "epochs: 1e-1\n", "epochs must be an integer, got '1e-1'"),
        ("c.yaml", "split: [0.6, 2e-1, x]\n", "split must be a number, got 'x'"),
    ],
)
def test_bad_config_files_are_one_line_naming_the_file(name, text, expected, tmp_path):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_config_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message
