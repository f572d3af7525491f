"""``--model NAME``: SchNet and PaiNN pre-train and fine-tune through fp-train like the ET; their
checkpoints name the backbone and rebuild it alone (evaluate and predict give the run's own test
predictions); a model flag the backbone lacks is refused; an --init of one backbone into another
is refused naming both; ET checkpoints (the zoo's, the committed runs') load and predict exactly as
an ET built independently from trainer.model with the same weights; zoo cards name the model."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
from fingerprint_pretrain.trainer import zoo
from fingerprint_pretrain.trainer.backbones import BACKBONES, PaiNN, SchNet
from fingerprint_pretrain.trainer.checkpoint import (
    architecture_from_checkpoint,
    load_checkpoint,
    model_args,
    model_from_checkpoint,
)
from fingerprint_pretrain.trainer.cli import main
from fingerprint_pretrain.trainer.config import MODEL_DEFAULTS, MODELS, ConfigError, TrainConfig
from fingerprint_pretrain.trainer.data import StoreDataset, collate
from fingerprint_pretrain.trainer.heads import MLPHead
from fingerprint_pretrain.trainer.model import EquivariantTransformer, ETConfig

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["--num-workers", "0", "--no-progress", "--batch-size", "8"]
SMALL = ["--hidden-channels", "16", "--num-rbf", "8", "--head-channels", "16", *QUIET]
SMALL += ["--max-neighbors", "12"]
# each backbone with options of its own (not its defaults, so the test sees them taken)
OWN = {
    "schnet": ["--model", "schnet", "--num-layers", "2", "--num-filters", "12"],
    "painn": ["--model", "painn", "--num-layers", "2", "--radial-basis", "bessel"],
}


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def store(tiny_store):
    """The trainer tests' shared tiny store (read only here)."""
    return tiny_store


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory):
    """Per backbone: a 1-epoch pre-training and a 2-epoch fine-tuning from it (--init, no
    model flags), both through the command line."""
    root = tmp_path_factory.mktemp("model-runs")
    out = {}
    for name, own in OWN.items():
        pre, ft = root / f"{name}-pre", root / f"{name}-ft"
        code = main(
            ["pretrain", "--store", str(store), "-d", "wacsfset1", "--run-dir", str(pre)]
            + ["--epochs", "1", *own, *SMALL]
        )
        assert code == 0
        code = main(
            ["finetune", "--store", str(store), "-t", "band_gap", "--init", str(pre / "best.pt")]
            + ["--run-dir", str(ft), "--epochs", "2", *QUIET]
        )
        assert code == 0
        out[name] = {"pre": pre, "ft": ft}
    return out


# ------------------------------------------------------------------------------------------
# The configuration
# ------------------------------------------------------------------------------------------
def test_the_model_defaults_are_those_of_the_backbones_config_dataclasses():
    assert tuple(BACKBONES) == MODELS
    assert typing.get_args(typing.get_type_hints(TrainConfig)["model"]) == MODELS
    for name, own in MODEL_DEFAULTS.items():
        defaults = {f.name: f.default for f in dataclasses.fields(BACKBONES[name][0])}
        assert {k: defaults[k] for k in own} == own, name
    assert TrainConfig.defaults("pretrain").model == "et"


def test_each_model_takes_its_own_defaults_and_keeps_what_was_given():
    et = TrainConfig.defaults("pretrain")
    # the ET's values as before --model existed
    assert (et.num_layers, et.num_rbf, et.num_heads, et.self_loops) == (8, 50, 8, False)
    schnet = et.updated(model="schnet")
    assert (schnet.num_layers, schnet.num_rbf, schnet.num_filters) == (6, 50, 128)
    assert schnet.num_heads is None and schnet.self_loops is None and schnet.radial_basis is None
    painn = TrainConfig(model="painn", num_layers=5)
    assert (painn.num_layers, painn.num_rbf, painn.radial_basis) == (5, 20, "gaussian")
    assert et.updated(num_layers=2).updated(model="painn").num_layers == 2  # a choice, kept
    assert painn.updated(model="et").num_heads == 8
    for bad in (dict(model="schnet", num_heads=4), dict(model="et", radial_basis="bessel")):
        with pytest.raises(ConfigError, match="applies to --model"):
            TrainConfig(**bad)
    with pytest.raises(ConfigError, match="num_heads applies to --model et only, not painn"):
        et.updated(num_heads=2).updated(model="painn")  # given, not silently dropped
    TrainConfig(model="schnet", hidden_channels=12)  # no num_heads: no multiple-of-heads rule


def test_et_model_args_keep_their_layout():
    """An ET config writes the model_args of checkpoint format 2 as before (written out)."""
    assert model_args(TrainConfig.defaults("pretrain"), 5) == {
        "model": "et",
        "mode": "pretrain",
        "out_dim": 5,
        "cutoff": 8.0,
        "max_neighbors": 32,
        "hidden_channels": 128,
        "num_layers": 8,
        "num_rbf": 50,
        "trainable_rbf": True,
        "num_heads": 8,
        "distance_influence": "both",
        "cutoff_lower": 0.0,
        "max_z": 100,
        "neighbor_embedding": True,
        "self_loops": False,
        "vector_cutoff": False,
        "head_channels": 128,
    }


# ------------------------------------------------------------------------------------------
# SchNet and PaiNN through the command line
# ------------------------------------------------------------------------------------------
def test_checkpoints_name_the_backbone_and_fine_tuning_takes_it_from_init(runs):
    for name, run in runs.items():
        for kind in ("pre", "ft"):
            ckpt = load_checkpoint(run[kind] / "best.pt")
            args = ckpt["model_args"]
            assert args["model"] == name and args["num_layers"] == 2, (name, kind)
            assert (args["hidden_channels"], args["num_rbf"], args["head_channels"]) == (16, 8, 16)
            assert "num_heads" not in args and "self_loops" not in args
            saved = json.loads((run[kind] / "config.json").read_text())
            assert saved["model"] == name and saved["num_heads"] is None
    schnet = load_checkpoint(runs["schnet"]["ft"] / "best.pt")
    assert schnet["model_args"]["num_filters"] == 12
    # PyG's SchNet names: the filter network is num_rbf -> num_filters, two interactions
    w = schnet["model"]["representation.interactions.1.mlp.0.weight"]
    assert tuple(w.shape) == (12, 8)
    assert not any(k.startswith("representation.interactions.2.") for k in schnet["model"])
    painn = load_checkpoint(runs["painn"]["ft"] / "best.pt")
    assert painn["model_args"]["radial_basis"] == "bessel"
    assert json.loads((runs["painn"]["ft"] / "config.json").read_text())["radial_basis"] == "bessel"
    # SchNetPack's PaiNN names: one filter net for both layers (2 × 3F outputs)
    assert tuple(painn["model"]["representation.filter_net.weight"].shape) == (2 * 3 * 16, 8)
    model, _ = model_from_checkpoint(runs["schnet"]["pre"] / "best.pt")
    assert type(model.representation) is SchNet and model.representation.cfg.num_filters == 12
    model, _ = model_from_checkpoint(runs["painn"]["ft"] / "best.pt")
    assert type(model.representation) is PaiNN


def _predictions(path: Path) -> dict[str, float]:
    with open(path, newline="") as fh:
        return {r["id"]: float(r["prediction_band_gap"]) for r in csv.DictReader(fh)}


@pytest.mark.parametrize("name", list(OWN))
def test_evaluate_and_predict_rebuild_the_run_and_give_its_test_predictions(
    runs, store, name, tmp_path, capsys
):
    """fp-train evaluate (the checkpoint alone) and fingerprint_pretrain.predict (the API)
    give the predictions the run itself wrote for its test split."""
    from fingerprint_pretrain import predict

    run = runs[name]["ft"]
    expected = _predictions(run / "test_predictions.csv")
    assert len(expected) >= 5  # the test split of the store's 40 structures
    out = tmp_path / "eval.csv"
    code, _, err = _cli(capsys, "evaluate", "--checkpoint", run / "best.pt", "--out", out)
    assert code == 0, err
    evaluated = _predictions(out)
    assert evaluated.keys() == expected.keys()
    for rid, value in expected.items():
        assert evaluated[rid] == pytest.approx(value, rel=1e-6, abs=1e-9), rid
    table = predict(store, run / "best.pt", progress=False, device="cpu")
    frame = table.frame().set_index("id")
    assert len(frame) == len(StoreDataset(store, "graph", [], 0, 8.0))
    for rid, value in expected.items():
        assert frame.loc[rid, "band_gap [eV]"] == pytest.approx(value, abs=1e-5), rid


def test_a_flag_the_model_lacks_is_refused_before_anything_runs(store, tmp_path, capsys):
    base = ["pretrain", "--store", store, "-d", "wacsfset1", "--epochs", "1", *QUIET]
    for flags, named in [
        (["--model", "schnet", "--num-heads", "4"], "--num-heads applies to --model et only"),
        (["--model", "painn", "--num-filters", "8"], "--num-filters applies to --model schnet"),
        (["--radial-basis", "bessel"], "--radial-basis applies to --model painn only, not et"),
        (["--model", "schnet", "--self-loops"], "--self-loops applies to --model et only"),
        (["--model", "schnet", "--no-self-loops"], "--self-loops applies to --model et only"),
    ]:
        run = tmp_path / "run"
        code, _, err = _cli(capsys, *base, "--run-dir", run, *flags)
        assert code == 2 and err.count("\n") == 1 and named in err, (flags, err)
        assert not run.exists()
    config = tmp_path / "c.yaml"  # the same from a config file, and a file's field vs a flag
    config.write_text("model: painn\nnum_heads: 2\n")
    code, _, err = _cli(capsys, *base, "--run-dir", tmp_path / "r", "--config", config)
    assert code == 2 and "num_heads applies to --model et only, not painn" in err
    config.write_text("num_heads: 2\n")
    code, _, err = _cli(
        capsys, *base, "--run-dir", tmp_path / "r", "--config", config, *OWN["schnet"]
    )
    assert code == 2 and "--num-heads applies to --model et only, not schnet" in err
    assert not (tmp_path / "r").exists()


def test_init_of_one_backbone_into_another_is_refused_naming_both(runs, store, tmp_path, capsys):
    schnet = runs["schnet"]["pre"] / "best.pt"
    base = ["finetune", "--store", store, "-t", "band_gap", "--init", schnet, *QUIET]
    code, _, err = _cli(capsys, *base, "--run-dir", tmp_path / "a", "--model", "et")
    assert code == 2 and err.count("\n") == 1
    assert "a schnet checkpoint cannot start a --model et run" in err and str(schnet) in err
    # no --model: the checkpoint's; an ET-only flag is then refused, not dropped
    code, _, err = _cli(capsys, *base, "--run-dir", tmp_path / "b", "--num-heads", "2")
    assert code == 2 and "--num-heads applies to --model et only, not schnet" in err
    code, _, err = _cli(capsys, *base, "--run-dir", tmp_path / "c", "--num-filters", "64")
    assert code == 2 and "num_filters 12" in err and "--num-filters 64" in err
    # an ET checkpoint (the zoo's) into --model painn
    code, _, err = _cli(
        capsys, "finetune", "--store", store, "-t", "band_gap", "--init", "et-small-mp20-gmpset1",
        "--run-dir", tmp_path / "d", "--model", "painn",
    )  # fmt: skip
    assert code == 2 and "a et checkpoint cannot start a --model painn run" in err
    assert not any((tmp_path / k).exists() for k in "abcd")


def test_zoo_cards_name_the_model(runs, tmp_path):
    new = zoo.add(runs["schnet"]["pre"], "schnet-tiny", "CC BY 4.0", zoo_dir=tmp_path)
    card = new["card"]
    assert card["model"]["model"] == "schnet" and card["model"]["num_filters"] == 12
    assert "num_heads" not in card["model"]
    table = zoo.format_table(zoo.entries(tmp_path))
    header, row = table.splitlines()[:2]
    assert header.split()[:2] == ["name", "model"] and row.split()[:2] == ["schnet-tiny", "SchNet"]
    text = zoo.format_card(new, tmp_path)
    assert "model:            SchNet, hidden 16, 2 layers, 8 RBF, 12 filters, head 16" in text
    painn = zoo.add(runs["painn"]["pre"], "painn-tiny", "CC BY 4.0", zoo_dir=tmp_path)
    assert "PaiNN, hidden 16, 2 layers, 8 RBF, bessel RBF basis" in zoo.format_card(painn, tmp_path)
    # the shipped ETs, and a card from before the model field, are ETs
    for e in zoo.entries():
        assert zoo.model_name(e["card"]) == "ET"
        assert "model:            ET, hidden 64, " in zoo.format_card(e)
    old = zoo.entries()[0]
    del old["card"]["model"]["model"]
    assert zoo.model_name(old["card"]) == "ET" and "  ET  " in zoo.format_table([old])


# ------------------------------------------------------------------------------------------
# ET checkpoints: unchanged
# ------------------------------------------------------------------------------------------
ET_CHECKPOINTS = [
    *(f"trainer/pretrained/et-small-mp20-{s}.pt" for s in ("eadset1", "gmpset1", "wacsfset1")),
    *(f"experiments/runs/cpu-small/pretrain/{s}/best.pt" for s in ("eadset1", "wacsfset1")),
]


def _independent_et(ckpt: dict) -> tuple[EquivariantTransformer, MLPHead]:
    """The ET and head of a checkpoint built straight from trainer.model's classes (no
    model_args parsing, no backbone registry), the weights loaded by their prefixes."""
    args, state = ckpt["model_args"], ckpt["model"]
    names = {f.name for f in dataclasses.fields(ETConfig)} - {"cutoff_upper"}
    cfg = ETConfig(cutoff_upper=args["cutoff"], **{k: args[k] for k in names})
    rep = EquivariantTransformer(cfg)
    head = MLPHead(cfg.hidden_channels, cfg.head_channels, args["out_dim"])
    for module, prefix in ((rep, "representation."), (head, "head.")):
        own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(own, strict=True)
    return rep.eval(), head.eval()


@pytest.mark.parametrize("path", ET_CHECKPOINTS)
def test_et_checkpoints_predict_as_an_independently_built_et(path, store, tmp_path):
    """The zoo's and the committed runs' checkpoints (format 2, pre-training) rebuild through
    the backbone registry into the very ET they were; also with their model key removed."""
    ckpt = load_checkpoint(ROOT / path)
    dataset = StoreDataset(store, "graph", [], ckpt["model_args"]["max_neighbors"], 8.0)
    batch = collate([dataset[i] for i in range(0, len(dataset), max(1, len(dataset) // 6))])
    rep, head = _independent_et(ckpt)
    with torch.no_grad():
        expected = head(rep(batch.z, batch.edge_index, batch.edge_vec)[0])
    keyless = tmp_path / "old.pt"
    torch.save(
        {**ckpt, "model_args": {k: v for k, v in ckpt["model_args"].items() if k != "model"}},
        keyless,
    )
    for source in (ROOT / path, keyless):
        model, info = model_from_checkpoint(source)
        assert type(model.representation) is EquivariantTransformer
        with torch.no_grad():
            got = model(batch.z, batch.edge_index, batch.edge_vec, batch.batch, batch.num_graphs)
        assert torch.equal(got, expected), source
    # as --init, a checkpoint without the key is an ET's (its model flags taken, model et)
    args = ckpt["model_args"]
    taken = architecture_from_checkpoint(keyless, {"hidden_channels": args["hidden_channels"]})
    assert taken["model"] == "et" and taken["num_heads"] == args["num_heads"]
    # the same configuration writes the same model_args today
    cfg = TrainConfig(**ckpt["config"])
    assert model_args(cfg, ckpt["model_args"]["out_dim"]) == ckpt["model_args"]


def test_the_et_path_never_imports_pytorch_geometric():
    """Training, evaluating and loading an ET need no PyG (its import costs seconds at every
    fp-train start); only SchNet and PaiNN import it, when they are built."""
    code = (
        "import sys, fingerprint_pretrain.trainer.train, fingerprint_pretrain.trainer.inference, "
        "fingerprint_pretrain.trainer.predict, fingerprint_pretrain.trainer.zoo\n"
        "from fingerprint_pretrain.trainer.checkpoint import model_from_checkpoint\n"
        "from fingerprint_pretrain.trainer.train import build_model\n"
        "from fingerprint_pretrain.trainer.config import TrainConfig\n"
        "model_from_checkpoint('trainer/pretrained/et-small-mp20-gmpset1.pt')\n"
        "build_model(TrainConfig(hidden_channels=8, num_heads=2, num_layers=1), 3)\n"
        "print('torch_geometric' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert proc.stdout.split() == ["False"]
