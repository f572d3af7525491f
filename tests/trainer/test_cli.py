"""fp-train's command line explains itself and refuses nonsense: help, default, unit and choices
on every option; --version; invalid values and typos are one-line usage errors (exit 2) before
anything runs; a run directory that holds a run is never silently overwritten; an empty
validation split is an error; zoo names work wherever a checkpoint is asked for."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import typing
from importlib.metadata import version

import click
import numpy as np
import pytest
from fingerprint_pretrain.schemas import open_store
from fingerprint_pretrain.trainer import zoo
from fingerprint_pretrain.trainer.cli import cli, main
from fingerprint_pretrain.trainer.config import ConfigError, TrainConfig
from fingerprint_pretrain.trainer.errors import TrainingError
from fingerprint_pretrain.trainer.train import train

from tests.builder.helpers import MP_SAMPLE, build
from tests.trainer.conftest import copy_store

TINY = [
    "--hidden-channels", "16", "--num-layers", "1", "--num-rbf", "8", "--num-heads", "2",
    "--head-channels", "16", "--num-workers", "0", "--no-progress",
]  # fmt: skip
OWN = {"mode", "store", "labels", "init"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "mp.lmdb"
    build(out, MP_SAMPLE, targets=["band_gap"], descriptors=["wacsfset1"])
    return out


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------
# Help
# ------------------------------------------------------------------------------------------
def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]


def test_every_option_of_every_command_has_help():
    assert cli.commands  # pretrain, finetune, evaluate, embed, models, report, sweep, ...
    for name, command in cli.commands.items():
        for option in _options(command):
            assert option.help and len(option.help) > 10, (name, option.name)


@pytest.mark.parametrize("mode", ["pretrain", "finetune"])
def test_config_options_show_their_default_unit_and_choices(mode):
    expected_defaults = {  # the paper's values, written out independently of TrainConfig
        "epochs": {"pretrain": "200", "finetune": "100"}[mode],
        "batch_size": {"pretrain": "8", "finetune": "32"}[mode],
        "split": {"pretrain": "0.8 0.05 0.15", "finetune": "0.6 0.2 0.2"}[mode],
        "lr": "0.0001",
        "cutoff": "8.0",
        "max_neighbors": "32",
        "amp": "--amp",
        "fold": "none",
    }
    options = {o.name: o for o in _options(cli.commands[mode])}
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f.name  # every field carries its help
        if f.name in OWN:
            continue
        if mode not in f.metadata.get("modes", (mode,)):  # a flag of other commands only
            assert f.name not in options, f.name
            continue
        option = options[f.name]
        assert option.help.startswith(f.metadata["help"])
        assert "[default: " in option.help, f.name
        if f.name in expected_defaults:
            assert f"[default: {expected_defaults[f.name]}" in option.help, f.name
        if f.metadata.get("unit"):
            assert f"unit: {f.metadata['unit']}]" in option.help, f.name
        if typing.get_origin(hints[f.name]) is typing.Literal:
            assert isinstance(option.type, click.Choice)
            assert tuple(option.type.choices) == typing.get_args(hints[f.name])
    assert "unit: Å" in options["cutoff"].help
    assert set(options["label_scaling"].type.choices) == {"per_feature", "global", "none"}
    assert set(options["target_scaling"].type.choices) == {"standard", "none"}


def test_version(capsys):
    code, out, _ = _cli(capsys, "--version")
    assert code == 0 and out.strip() == f"fp-train, version {version('fingerprint-pretrain')}"


# ------------------------------------------------------------------------------------------
# Invalid values
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--cutoff", "-1"], "--cutoff"),
        (["--cutoff", "nan"], "--cutoff"),
        (["--cutoff", "inf"], "--cutoff"),
        (["--split", "0.5", "--split", "0.2", "--split", "0.2"], "--split"),
        (["--split", "0.8", "--split", "0.2"], "--split"),
        (["--epochs", "0"], "--epochs"),
        (["--fold", "5"], "--fold"),
        (["--fold", "-1"], "--fold"),
        (["--max-train", "0"], "--max-train"),
        (["--batch-size", "0"], "--batch-size"),
        (["--lr", "0"], "--lr"),
        (["--device", "cuda:7"], "--device"),
        (["--device", "gpu"], "--device"),
        (["--target-scaling", "standrd"], "--target-scaling"),
        (["--resume", "--overwrite"], "--overwrite"),
    ],
)
def test_invalid_values_are_one_line_usage_errors(args, named, capsys, tmp_path):
    run = tmp_path / "run"
    code, _, err = _cli(
        capsys, "finetune", "--store", tmp_path / "s.lmdb", "-t", "y", "--run-dir", run, *args
    )
    assert code == 2, err
    assert err.startswith("fp-train: error: ") and err.count("\n") == 1, err
    assert named in err and "Traceback" not in err
    assert not run.exists()  # refused before anything ran


def test_typed_choices_and_ranges_are_checked_when_the_config_is_made(tmp_path, capsys):
    with pytest.raises(ConfigError, match="target_scaling must be one of standard, none"):
        TrainConfig(target_scaling="standrd")  # used to fall back to no scaling, silently
    with pytest.raises(ConfigError, match="label_scaling"):
        TrainConfig.defaults("pretrain").updated(label_scaling="per-feature")
    with pytest.raises(ConfigError, match="mode"):
        TrainConfig(mode="pretraining")
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        TrainConfig(epochs="10")
    with pytest.raises(ConfigError, match="must be a multiple of num_heads"):
        TrainConfig(hidden_channels=30, num_heads=8)
    assert TrainConfig(cutoff=6).cutoff == 6.0 and isinstance(TrainConfig(cutoff=6).cutoff, float)
    # a config file's typo is named with the file
    config = tmp_path / "c.yaml"
    config.write_text("target_scaling: standrd\n")
    code, _, err = _cli(
        capsys, "finetune", "--config", config, "--store", "s", "-t", "y", "--run-dir", tmp_path
    )
    assert code == 2 and err.count("\n") == 1 and str(config) in err and "standrd" in err


def _configs_made(monkeypatch) -> list[TrainConfig]:
    """The configurations fp-train would train with (the training itself replaced)."""
    made: list[TrainConfig] = []
    monkeypatch.setattr("fingerprint_pretrain.trainer.train.train", made.append)
    return made


def test_a_json_config_file_gives_every_key_and_flags_given_win(tmp_path, monkeypatch, capsys):
    made = _configs_made(monkeypatch)
    keys = {"store": "s.lmdb", "labels": ["y"], "epochs": 7, "batch_size": 4, "min_lr": 1e-6}
    keys |= {"split": [0.5, 0.25, 0.25], "amp": False, "max_train": 12}
    config = tmp_path / "run.json"
    config.write_text(json.dumps(keys))  # min_lr as 1e-06: JSON, not YAML 1.1's string
    run = tmp_path / "r"
    code, _, err = _cli(capsys, "finetune", "--config", config, "--run-dir", run, "--epochs", "3")
    assert code == 0, err
    (cfg,) = made
    assert cfg.epochs == 3  # the flag given, over the file's 7
    assert {k: getattr(cfg, k) for k in keys if k != "epochs"} == {
        k: v for k, v in keys.items() if k != "epochs"
    }
    defaults = TrainConfig.defaults("finetune")
    assert cfg.mode == "finetune" and cfg.lr == defaults.lr and cfg.run_dir == str(run)
    # a flag left at its default does not override the file (--batch-size not given: 4)
    code, _, _ = _cli(capsys, "finetune", "--config", config, "--run-dir", run, "--amp")
    assert code == 0 and made[1].batch_size == 4 and made[1].amp is True


@pytest.mark.parametrize(
    "keys, named",
    [
        ({"store": "s", "labels": ["y"], "max_vall": 5}, "unknown configuration key 'max_vall'"),
        ({"store": "s", "labels": ["y"], "mode": "pretrain"}, "mode"),
        ({"store": "s", "labels": ["y"], "epochs": "ten"}, "epochs must be an integer"),
    ],
)
def test_a_bad_config_file_is_a_one_line_usage_error(keys, named, tmp_path, monkeypatch, capsys):
    made = _configs_made(monkeypatch)
    config = tmp_path / "run.json"
    config.write_text(json.dumps(keys))
    code, _, err = _cli(capsys, "finetune", "--config", config, "--run-dir", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and str(config) in err and named in err, err
    assert not made


def test_a_yaml_config_file_with_lr_3e_4_trains_with_that_lr(store, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"store: {store}\nlabels: [wacsfset1]\nlr: 3e-4\nepochs: 1\nmax_train: 8\n")
    run = tmp_path / "pre"
    code, _, err = _cli(capsys, "pretrain", "--config", config, "--run-dir", run, *TINY)
    assert code == 0, err
    (row,) = csv.DictReader((run / "metrics.csv").open())
    assert float(row["lr"]) == 3e-4  # the optimiser's learning rate in the epoch that ran
    # a value that is no number: one line naming the file and the field, nothing run
    config.write_text(f"store: {store}\nlabels: [wacsfset1]\nlr: abc\n")
    code, _, err = _cli(capsys, "pretrain", "--config", config, "--run-dir", tmp_path / "r2")
    assert code == 2 and err.count("\n") == 1 and f"{config}: lr must be a number" in err, err
    assert not (tmp_path / "r2").exists()


@pytest.mark.parametrize("origin", [None, "https://example.org/stores/mp.lmdb/"])
def test_an_absent_label_set_is_one_line_naming_the_set_and_how_to_get_it(
    tiny_store, origin, tmp_path, capsys
):
    here = copy_store(tiny_store, tmp_path)
    (here / "labels-wacsfset1.mdb").unlink()  # listed in the manifest, its part not here
    if origin:
        (here / "origin.json").write_text(json.dumps({"url": origin, "parts": {}}))
    run = tmp_path / "pre"
    args = ["pretrain", "--store", here, "-d", "wacsfset1", "--run-dir", run, *TINY]
    code, _, err = _cli(capsys, *args)
    assert code == 1 and err.count("\n") == 1, err
    how = f"fp-build fetch {origin} --labels wacsfset1" if origin else f"fp-build add {here}"
    assert "'wacsfset1'" in err and "absent" in err and how in err, err
    assert "--descriptor wacsfset1" in err or origin
    # a set the store does not list at all: added with fp-build add, whatever the origin
    code, _, err = _cli(capsys, *args[:4], "wacsfset2", *args[5:])
    assert code == 1 and err.count("\n") == 1 and "wacsfset2" in err, err
    assert f"fp-build add {here} --descriptor NAME" in err, err


# ------------------------------------------------------------------------------------------
# Run directories and splits
# ------------------------------------------------------------------------------------------
def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_run_dir_holding_a_run_is_never_silently_overwritten(store, tmp_path, capsys):
    run = tmp_path / "pre"
    base = ["pretrain", "--store", store, "-d", "wacsfset1", "--run-dir", run, "--max-train", "8"]
    base += TINY
    code, _, err = _cli(capsys, *base, "--epochs", "1", "--save-every", "1")
    assert code == 0, err
    best, result = _sha(run / "best.pt"), (run / "result.json").read_text()
    # the same command again: refused, nothing touched
    code, _, err = _cli(capsys, *base, "--epochs", "1", "--save-every", "1")
    assert code == 2 and err.count("\n") == 1
    assert "holds a finished run" in err and "--overwrite" in err and "--resume" in err
    assert _sha(run / "best.pt") == best and (run / "result.json").read_text() == result
    # resuming with another configuration: refused, naming what differs
    code, _, err = _cli(capsys, *base, "--epochs", "1", "--resume", "--lr", "0.001")
    assert code == 2 and err.count("\n") == 1 and "lr 0.0001 -> 0.001" in err
    assert "--overwrite" in err and _sha(run / "best.pt") == best
    # resuming with the same configuration (more epochs allowed): continues the run
    code, _, err = _cli(capsys, *base, "--epochs", "2", "--resume")
    assert code == 0, err
    assert [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().split()[1:]] == [1, 2]
    # --overwrite: that run's files go (epoch1.pt too), a new run starts
    assert (run / "epoch1.pt").exists()
    (run / "notes.txt").write_text("mine")
    code, _, err = _cli(capsys, *base, "--epochs", "1", "--overwrite")
    assert code == 0, err
    assert not (run / "epoch1.pt").exists() and (run / "notes.txt").read_text() == "mine"
    assert len((run / "metrics.csv").read_text().split()) == 2  # header + one epoch
    # an unfinished run (no result.json) is not restarted silently either
    (run / "result.json").unlink()
    code, _, err = _cli(capsys, *base, "--epochs", "1")
    assert code == 2 and "holds an unfinished run" in err


def test_an_empty_validation_split_is_an_error(store, tmp_path):
    n = len(open_store(store))
    cases = [
        {"split": [0.9, 0.0, 0.1]},
        {"fold": 0, "val_fraction": 0.01},  # round(0.01 * 32) = 0 of the other folds
    ]
    for k, case in enumerate(cases):
        run = tmp_path / f"r{k}"
        cfg = TrainConfig.defaults("finetune").updated(
            store=str(store), labels=["band_gap"], run_dir=str(run), epochs=1,
            hidden_channels=16, num_layers=1, num_rbf=8, num_heads=2, head_channels=16,
            num_workers=0, progress=False, **case,
        )  # fmt: skip
        with pytest.raises(TrainingError) as err:
            train(cfg)
        message = str(err.value)
        assert "\n" not in message and "val split" in message and f"its {n} structures" in message
        assert "val 0" in message
        assert not (run / "best.pt").exists() and not (run / "last.pt").exists()


# ------------------------------------------------------------------------------------------
# The zoo on the command line
# ------------------------------------------------------------------------------------------
def test_zoo_names_work_for_init_evaluate_and_embed(store, tmp_path, capsys):
    name = "et-small-mp20-wacsfset1"
    run = tmp_path / "ft"
    code, out, err = _cli(
        capsys, "finetune", "--init", name, "--store", store, "-t", "band_gap",
        "--run-dir", run, "--epochs", "1", "--max-train", "8", "--max-val", "4",
        "--num-workers", "0", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    saved = json.loads((run / "config.json").read_text())
    assert saved["init"] == str(zoo.ZOO_DIR / f"{name}.pt")
    assert saved["hidden_channels"] == 64 and saved["num_layers"] == 4  # the zoo model's
    assert "init: " in out and "tensors copied" in out
    code, out, err = _cli(
        capsys, "embed", "--checkpoint", name, "--store", store, "--out", tmp_path / "e.npz"
    )
    assert code == 0, err
    assert np.load(tmp_path / "e.npz")["embeddings"].shape == (len(open_store(store)), 64)
    code, out, err = _cli(
        capsys, "evaluate", "--checkpoint", name, "--store", store, "--split", "all"
    )
    assert code == 0, err
    assert out.strip().endswith(f"on {len(open_store(store))} structures")
    for command in (
        ["finetune", "--store", store, "-t", "band_gap", "--run-dir", run, "--init"],
        ["evaluate", "--checkpoint"],
        ["embed", "--store", store, "--out", tmp_path / "x.npz", "--checkpoint"],
    ):
        code, _, err = _cli(capsys, *command, "et-nope")
        assert code == 2 and err.count("\n") == 1 and "et-nope: neither" in err
        assert all(e["name"] in err for e in zoo.entries())


def test_models_lists_the_zoo_and_prints_a_card(capsys):
    code, out, _ = _cli(capsys, "models")
    assert code == 0
    for e in zoo.entries():
        line = next(ln for ln in out.splitlines() if ln.startswith(e["name"]))
        card = e["card"]
        assert card["labels"][0]["name"] in line
        assert f"{card['structures']['total']:,}" in line  # 2,485 (mp20) or 46,764 (MP Relaxed)
        assert f"{card['model']['parameters']:,}" in line and "full split" in line
    code, out, _ = _cli(capsys, "models", "et-small-mp20-eadset1")
    card = zoo.entry("et-small-mp20-eadset1")["card"]
    assert code == 0 and card["pretraining_store"]["content_hash"] in out
    assert "CC BY 4.0" in out and "310,656 parameters" in out
    assert "jdft2d: 44.76 vs 53.88 meV/atom from scratch, -16.9 %" in out  # docs/results.md
    code, _, err = _cli(capsys, "models", "et-nope")
    assert code == 2 and err.count("\n") == 1 and "et-small-mp20-gmpset1" in err
