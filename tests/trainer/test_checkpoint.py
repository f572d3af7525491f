"""Checkpoints: safe to load (a crafted pickle is refused and never runs), self-describing (the
model is rebuilt from the file alone), version-1 files named and converted losslessly, exact
resume through the format, resume refused on another store, fine-tuning takes its model from
--init, atomic numbers beyond the embedding refused before training."""

from __future__ import annotations

import csv
import json
import pickle
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fingerprint_pretrain.schemas import open_store
from fingerprint_pretrain.trainer.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    restore_rng,
)
from fingerprint_pretrain.trainer.cli import main
from fingerprint_pretrain.trainer.config import TrainConfig
from fingerprint_pretrain.trainer.data import LabelScaler, StoreDataset, collate
from fingerprint_pretrain.trainer.errors import TrainingError
from fingerprint_pretrain.trainer.train import train

from tests.builder.helpers import MP_SAMPLE, PEROV_SAMPLE, build, write_csv
from tests.trainer.conftest import TINY, copy_store

csv.field_size_limit(sys.maxsize)

QUIET = ["--num-workers", "0", "--no-progress"]


def tiny(mode: str, **kw) -> TrainConfig:
    return TrainConfig.defaults(mode).updated(**TINY, **kw)


@pytest.fixture(scope="module")
def store(tiny_store, tmp_path_factory):
    """This file's own copy of the tiny store (its tests copy and change stores)."""
    return copy_store(tiny_store, tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def pre(store, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "pre"
    train(tiny("pretrain", store=str(store), labels=["wacsfset1"], run_dir=str(run), epochs=2))
    return run


def _as_version1(path: Path, out: Path, store_path: str | None = None) -> dict:
    """Rewrite a checkpoint the way fp-train wrote version 1 (NumPy splits and RNG state,
    tuples for Python's RNG, the old model_args and store keys, no 'predicts')."""
    new = torch.load(path, weights_only=True)
    rng = new["rng"]
    np_rng = rng["numpy"]
    old = {
        **{k: v for k, v in new.items() if k not in ("predicts",)},
        "version": 1,
        "splits": {k: v.numpy() for k, v in new["splits"].items()},
        "rng": {
            "torch": rng["torch"],
            "numpy": (
                np_rng["bit_generator"],
                np_rng["key"].numpy().astype(np.uint32),
                np_rng["pos"],
                np_rng["has_gauss"],
                np_rng["cached_gaussian"],
            ),
            "python": (
                rng["python"]["version"],
                tuple(rng["python"]["state"]),
                rng["python"]["gauss_next"],
            ),
        },
        "model_args": {
            k: new["model_args"][k]
            for k in (
                "out_dim",
                "mode",
                "hidden_channels",
                "num_layers",
                "num_rbf",
                "num_heads",
                "head_channels",
                "cutoff",
                "self_loops",
                "max_neighbors",
            )
        },
        "store": {
            "path": store_path or new["store"]["path"],
            "content_hash": new["store"]["content_hash"],
            "schema_version": new["store"]["schema_version"],
        },
    }
    torch.save(old, out)
    return old


class _Payload:
    """Unpickling this creates ``marker``: code from the file, run on load."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()",))


def _crafted(tmp_path: Path, marker: Path, kind: str) -> Path:
    path = tmp_path / f"crafted-{kind}.pt"
    payload = {"format": "fingerprint-pretrain-checkpoint", "version": 2, "x": _Payload(marker)}
    if kind == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(payload, fh)
    return path


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------
def test_checkpoint_loads_as_plain_data_and_describes_itself(pre, store):
    ckpt = torch.load(pre / "best.pt", weights_only=True)  # torch's own safe loader
    manifest = open_store(store).manifest
    assert ckpt["version"] == 2
    args = ckpt["model_args"]
    assert {k: args[k] for k in ("model", "mode", "out_dim", "cutoff", "max_neighbors")} == {
        "model": "et",
        "mode": "pretrain",
        "out_dim": 48,
        "cutoff": 8.0,
        "max_neighbors": 32,
    }
    assert [args[k] for k in ("hidden_channels", "num_layers", "num_rbf", "num_heads")] == [
        16,
        1,
        8,
        2,
    ]
    assert args["head_channels"] == 16 and args["self_loops"] is False and args["max_z"] == 100
    (label,) = ckpt["predicts"]["labels"]
    assert label == {
        "name": "wacsfset1",
        "kind": "descriptor",
        "unit": None,
        "dim": 48,
        "family": manifest["descriptors"]["wacsfset1"]["family"],
    }
    np.testing.assert_allclose(
        ckpt["scaler"]["shift"], manifest["descriptors"]["wacsfset1"]["stats"]["mean"]
    )
    assert ckpt["store"] == {
        "path": str(store),
        "content_hash": manifest["content_hash"],
        "graphs_hash": manifest["graphs_hash"],
        "label_hashes": {"wacsfset1": manifest["descriptors"]["wacsfset1"]["hash"]},
        "schema_version": manifest["schema_version"],
    }
    splits = np.load(pre / "splits.npz")
    for name in ("train", "val", "test"):
        assert ckpt["splits"][name].dtype == torch.int64
        np.testing.assert_array_equal(ckpt["splits"][name].numpy(), splits[name])


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_a_crafted_pickle_is_refused_and_never_run(tmp_path, capsys, kind, store):
    marker = tmp_path / "pwned"
    path = _crafted(tmp_path, marker, kind)
    with pytest.raises(TrainingError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: refused") and "\n" not in message
    assert ("would call eval" if kind == "torch" else "stopped at") in message
    assert not marker.exists()
    for args in (
        ["evaluate", "--checkpoint", path],
        ["embed", "--checkpoint", path, "--store", store, "--out", tmp_path / "e.npz"],
        ["convert-checkpoint", path, "--out", tmp_path / "c.pt"],
        ["finetune", "--store", store, "-t", "band_gap", "--init", path, "--run-dir", tmp_path],
    ):
        code, _, stderr = _cli(capsys, *args)
        assert code == 1 and stderr.count("\n") == 1 and str(path) in stderr, (args, stderr)
        assert not marker.exists(), args
    # the payload is real: an unrestricted load runs it
    if kind == "torch":
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as fh:
            pickle.load(fh)
    assert marker.exists()


def test_a_version1_checkpoint_names_the_command_that_converts_it(pre, tmp_path, capsys):
    old = tmp_path / "old.pt"
    _as_version1(pre / "best.pt", old)
    with pytest.raises(TrainingError, match=f"fp-train convert-checkpoint {old}$"):
        load_checkpoint(old)
    code, _, stderr = _cli(capsys, "evaluate", "--checkpoint", old)
    assert code == 1 and f"convert-checkpoint {old}" in stderr and stderr.count("\n") == 1


def test_convert_keeps_weights_optimiser_split_and_rng_exactly(pre, store, tmp_path, capsys):
    old_path, new_path = tmp_path / "old.pt", tmp_path / "new.pt"
    _as_version1(pre / "last.pt", old_path)
    old = torch.load(old_path, weights_only=False)  # our own file: the reference
    code, out, _ = _cli(capsys, "convert-checkpoint", old_path, "--out", new_path)
    assert code == 0 and f"wrote {new_path}" in out
    new = load_checkpoint(new_path)
    assert new["version"] == 2 and set(old["model"]) == set(new["model"])
    for name, tensor in old["model"].items():
        assert torch.equal(tensor, new["model"][name]), name
    for pid, state in old["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, new["optimizer"]["state"][pid][key])
    assert new["scheduler"] == old["scheduler"] and new["history"] == old["history"]
    for name, split in old["splits"].items():
        np.testing.assert_array_equal(new["splits"][name].numpy(), split)
    restore_rng(new["rng"])
    np_state = np.random.get_state()  # noqa: NPY002
    assert np_state[0] == old["rng"]["numpy"][0] and np_state[2:] == old["rng"]["numpy"][2:]
    np.testing.assert_array_equal(np_state[1], old["rng"]["numpy"][1])
    assert random.getstate() == old["rng"]["python"]
    assert torch.equal(torch.get_rng_state(), old["rng"]["torch"])
    # the store still exists at the recorded path: its hashes and the architecture are filled in
    original = load_checkpoint(pre / "last.pt")
    assert new["store"] == original["store"] and new["model_args"] == original["model_args"]
    assert new["predicts"] == original["predicts"]
    # in place (no --out), with the store gone: converted, and the gap is reported
    moved = tmp_path / "moved.pt"
    _as_version1(pre / "last.pt", moved, store_path=str(tmp_path / "gone.lmdb"))
    code, out, _ = _cli(capsys, "convert-checkpoint", moved)
    assert code == 0 and "note: store hashes and units not recorded" in out
    assert load_checkpoint(moved)["store"]["graphs_hash"] is None


def test_convert_refuses_what_is_not_a_fingerprint_checkpoint(tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3), "note": np.zeros(2)}, other)
    code, _, stderr = _cli(capsys, "convert-checkpoint", other)
    assert code == 1 and f"{other}: not a fingerprint-pretrain checkpoint" in stderr


def test_rng_states_round_trip_exactly_through_a_saved_checkpoint(tmp_path):
    from fingerprint_pretrain.trainer.checkpoint import FORMAT, rng_state, save_checkpoint

    random.seed(5), np.random.seed(6), torch.manual_seed(7)  # noqa: NPY002
    random.gauss(0, 1), np.random.standard_normal(), torch.rand(3)  # noqa: NPY002  (caches)
    save_checkpoint(
        {"format": FORMAT, "version": 2, "model": {}, "model_args": {}, "rng": rng_state()},
        tmp_path / "r.pt",
    )
    # the reference: the generators' own next draws
    expected = (
        [random.gauss(0, 1), random.random()],
        np.random.standard_normal(4),  # noqa: NPY002
        torch.rand(4),
    )
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # noqa: NPY002
    restore_rng(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert [random.gauss(0, 1), random.random()] == expected[0]
    np.testing.assert_array_equal(np.random.standard_normal(4), expected[1])  # noqa: NPY002
    assert torch.equal(torch.rand(4), expected[2])


def _final_state(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)


def test_resume_is_bit_exact_through_the_format_and_a_conversion(store, tmp_path, capsys):
    cfg = tiny("pretrain", store=str(store), labels=["wacsfset1"], batch_size=4, max_train=12)
    train(cfg.updated(run_dir=str(tmp_path / "full"), epochs=2))
    part = tmp_path / "part"
    train(cfg.updated(run_dir=str(part), epochs=1))
    converted = tmp_path / "converted"
    shutil.copytree(part, converted)
    _as_version1(part / "last.pt", converted / "last.pt")
    assert _cli(capsys, "convert-checkpoint", converted / "last.pt")[0] == 0
    full = _final_state(tmp_path / "full")
    for run in (part, converted):
        train(cfg.updated(run_dir=str(run), epochs=2, resume=True))
        resumed = _final_state(run)
        assert resumed["epoch"] == 1
        for name in full["model"]:
            assert torch.equal(full["model"][name], resumed["model"][name]), (run, name)
        np.testing.assert_array_equal(full["rng"]["torch"], resumed["rng"]["torch"])


def test_the_model_rebuilt_from_the_checkpoint_alone_predicts_as_the_run_did(store, tmp_path):
    run = tmp_path / "ft"
    train(tiny("finetune", store=str(store), labels=["band_gap"], run_dir=str(run), epochs=2))
    full = load_checkpoint(run / "best.pt")
    assert full["predicts"]["labels"] == [
        {"name": "band_gap", "kind": "target", "unit": "eV", "dim": 1, "family": None}
    ]
    alone = tmp_path / "alone.pt"  # weights, architecture, label scaling: nothing else
    keep = ("format", "version", "model", "model_args", "scaler")
    torch.save({k: full[k] for k in keep}, alone)
    model, info = model_from_checkpoint(alone)
    assert "config" not in info
    rows = list(csv.DictReader(open(run / "test_predictions.csv")))
    args = info["model_args"]
    dataset = StoreDataset(store, "graph", ["band_gap"], args["max_neighbors"], args["cutoff"])
    by_id = {dataset.raw(i)[0]: i for i in range(len(dataset))}
    batch = collate([dataset[by_id[r["id"]]] for r in rows])
    with torch.no_grad():
        pred = model(batch.z, batch.edge_index, batch.edge_vec, batch.batch, batch.num_graphs)
    pred = LabelScaler.from_dict(info["scaler"]).inverse(pred.double())[:, 0].numpy()
    expected = [float(r["prediction_band_gap"]) for r in rows]
    np.testing.assert_allclose(pred, expected, rtol=1e-6, atol=1e-9)


def test_finetune_takes_the_model_from_init_and_names_a_conflicting_flag(
    pre, store, tmp_path, capsys
):
    run = tmp_path / "ft"
    base = ["finetune", "--store", store, "-t", "band_gap", "--init", pre / "best.pt"]
    code, out, err = _cli(capsys, *base, "--run-dir", run, "--epochs", "1", *QUIET)
    assert code == 0, err
    saved = json.loads((run / "config.json").read_text())
    # not the defaults (128, 8, 50, 8, 128): the checkpoint's
    assert [saved[k] for k in ("hidden_channels", "num_layers", "num_rbf", "num_heads")] == [
        16,
        1,
        8,
        2,
    ]
    assert saved["head_channels"] == 16 and "init: " in out
    code, _, err = _cli(capsys, *base, "--run-dir", tmp_path / "x", "--hidden-channels", "32")
    assert code == 2 and err.count("\n") == 1
    assert "hidden_channels 16" in err and "--hidden-channels 32" in err
    config = tmp_path / "c.yaml"
    config.write_text("num_layers: 3\n")
    code, _, err = _cli(capsys, *base, "--run-dir", tmp_path / "y", "--config", config)
    assert code == 2 and "num_layers 1" in err and "--num-layers 3" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_resume_is_refused_on_another_store_but_not_after_an_unrelated_add(store, tmp_path):
    from fingerprint_pretrain.builder.add import add_descriptors

    here = tmp_path / "s.lmdb"
    shutil.copytree(store, here)
    cfg = tiny("pretrain", store=str(here), labels=["wacsfset1"], run_dir=str(tmp_path / "r"))
    train(cfg.updated(epochs=1))
    # another store at the same path
    shutil.rmtree(here)
    build(here, PEROV_SAMPLE, descriptors=["wacsfset1"])
    other = open_store(here).manifest
    before = open_store(store).manifest
    with pytest.raises(TrainingError) as err:
        train(cfg.updated(epochs=2, resume=True))
    message = str(err.value)
    assert "\n" not in message and message.count(str(here)) == 2
    assert before["graphs_hash"] in message and other["graphs_hash"] in message
    # the same store with a label set added: its content hash changes, the resume goes on
    shutil.rmtree(here)
    shutil.copytree(store, here)
    add_descriptors(here, ["wacsfset2"], jobs=1, progress=False)
    assert open_store(here).content_hash != before["content_hash"]
    train(cfg.updated(epochs=2, resume=True))
    assert load_checkpoint(tmp_path / "r" / "last.pt")["epoch"] == 1


@pytest.fixture(scope="module")
def fermium_store(tmp_path_factory):
    """Six MP structures, two of which hold fermium (Z = 100, beyond the embedding)."""
    root = tmp_path_factory.mktemp("fm")
    rows = list(csv.DictReader(open(MP_SAMPLE)))[:5]
    assert "  Na  Na0 " in rows[0]["cif"]
    rows[0]["cif"] = rows[0]["cif"].replace("  Na  Na0 ", "  Fm  Fm0 ")
    rows.insert(3, {**rows[0], "material_id": rows[0]["material_id"] + "-fm"})
    write_csv(root / "fm.csv", list(rows[0]), [list(r.values()) for r in rows])
    build(root / "fm.lmdb", root / "fm.csv", targets=["band_gap"], descriptors=["wacsfset1"])
    return root / "fm.lmdb"


def test_atomic_numbers_beyond_the_embedding_are_refused_before_training(
    fermium_store, pre, tmp_path, capsys
):
    assert sum(100 in r["z"] for r in open_store(fermium_store)) == 2  # independent count
    run = tmp_path / "r"
    for mode, labels in (("pretrain", ["wacsfset1"]), ("finetune", ["band_gap"])):
        cfg = tiny(mode, store=str(fermium_store), labels=labels, run_dir=str(run), epochs=1)
        with pytest.raises(TrainingError) as err:
            train(cfg)
        message = str(err.value)
        assert message.startswith(f"{fermium_store}: atomic numbers beyond the model's")
        assert "Z=100 (Fm) in 2 record(s), first record 0 (id mp-1221227)" in message
        assert not (run / "last.pt").exists()
    code, _, err = _cli(
        capsys, "embed", "--checkpoint", pre / "best.pt", "--store", fermium_store,
        "--out", tmp_path / "e.npz",
    )  # fmt: skip
    assert code == 1 and "Z=100 (Fm) in 2 record(s)" in err and not (tmp_path / "e.npz").exists()
    code, _, err = _cli(
        capsys, "evaluate", "--checkpoint", pre / "best.pt", "--store", fermium_store,
        "--split", "all",
    )  # fmt: skip
    assert code == 1 and "Z=100 (Fm)" in err and err.count("\n") == 1
