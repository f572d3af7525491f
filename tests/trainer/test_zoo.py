"""The model zoo: shipped files match their registry (sha256, size budget), are stripped copies of
the committed pre-training checkpoints (same weights, no optimiser state), their cards agree with
the runs and with docs/results.md, names resolve (a damaged file or an unknown name is one line),
and ``add`` turns a run into an entry."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fingerprint_pretrain.trainer import zoo
from fingerprint_pretrain.trainer.checkpoint import load_checkpoint, model_from_checkpoint
from fingerprint_pretrain.trainer.errors import TrainingError

from tests.conftest import REPO

RUNS = REPO / "experiments" / "runs" / "cpu-small"
SETS = ("eadset1", "gmpset1", "wacsfset1")
NAMES = [f"et-small-mp20-{s}" for s in SETS]
#: every shipped model: the cpu-small three and wACSF set 1 pre-trained on MP Relaxed (issue 17)
SHIPPED = [*NAMES, "et-small-mpr-wacsfset1"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_shipped_files_are_the_registered_ones_within_the_budget():
    entries = zoo.entries()
    assert [e["name"] for e in entries] == SHIPPED
    files = sorted(p.name for p in zoo.ZOO_DIR.glob("*.pt"))
    assert files == sorted(e["file"] for e in entries)  # nothing unregistered is shipped
    for e in entries:
        path = zoo.ZOO_DIR / e["file"]
        assert _sha256(path) == e["sha256"]
        assert path.stat().st_size == e["bytes"] <= zoo.MAX_MODEL_BYTES
    total = sum(p.stat().st_size for p in zoo.ZOO_DIR.iterdir() if p.is_file())
    assert total <= zoo.BUDGET_BYTES == 15_000_000
    # the package ships them (wheel): pyproject's package-data names the folder's files
    assert '"pretrained/*"' in (REPO / "pyproject.toml").read_text()


@pytest.mark.parametrize("label_set", SETS)
def test_zoo_checkpoints_are_stripped_copies_of_the_runs(label_set):
    source = RUNS / "pretrain" / label_set / "best.pt"
    full = torch.load(source, weights_only=True)
    path = zoo.resolve(f"et-small-mp20-{label_set}")
    stripped = load_checkpoint(path)
    assert not {"optimizer", "scheduler", "rng"} & set(stripped)
    assert stripped["model"].keys() == full["model"].keys()
    for name, value in full["model"].items():
        assert torch.equal(stripped["model"][name], value), name
    for key in ("model_args", "predicts", "scaler", "store", "config", "labels"):
        assert stripped[key] == full[key], key
    assert stripped["zoo"]["stripped_from_sha256"] == _sha256(source)
    assert path.stat().st_size < source.stat().st_size / 2  # the optimiser was 2/3 of it
    model, _ = model_from_checkpoint(path)
    assert sum(p.numel() for p in model.parameters()) == sum(
        v.numel() for v in full["model"].values()
    )


@pytest.mark.parametrize("label_set", SETS)
def test_cards_agree_with_the_runs_they_came_from(label_set):
    run = RUNS / "pretrain" / label_set
    card = zoo.entry(f"et-small-mp20-{label_set}")["card"]
    with open(run / "metrics.csv") as fh:
        val = [float(r["val_loss"]) for r in csv.DictReader(fh)]
    assert card["epochs"] == len(val) == 30
    assert card["best_val_loss"] == pytest.approx(min(val), rel=1e-12)
    assert card["best_epoch"] == int(np.argmin(val)) + 1
    with np.load(run / "splits.npz") as splits:
        sizes = {k: len(splits[k]) for k in ("train", "val", "test")}
    assert card["structures"] == {**sizes, "total": 2485}
    full = torch.load(run / "best.pt", weights_only=True)
    assert card["pretraining_store"]["content_hash"] == full["store"]["content_hash"]
    assert card["pretraining_store"]["name"] == "mp20_subset"
    assert card["model"]["parameters"] == sum(v.numel() for v in full["model"].values())
    assert card["labels"][0]["name"] == label_set
    assert card["labels"][0]["dim"] == full["model"]["head.out.weight"].shape[0]
    assert "CC BY 4.0" in card["licence"]


def _results_tables() -> dict:
    """docs/results.md's Table-2 cells: {(size, init): {task: (mean text, wins, seeds)}} and
    {(size, init): avg % improvement}; size None = the full split."""
    text = (REPO / "docs" / "results.md").read_text()
    cells, gains = {}, {}
    for block in re.split(r"\n## ", text):
        title = block.splitlines()[0]
        found = re.match(r"Test MAE, (\d+) training structures", title)
        if not found and not title.startswith("Test MAE, full training split"):
            continue
        size = int(found.group(1)) if found else None
        rows = [ln for ln in block.splitlines() if ln.startswith("| ")]
        tasks = [c.strip() for c in rows[0].strip("|").split("|")][1:-1]
        for row in rows[1:]:
            parts = [c.strip() for c in row.strip("|").split("|")]
            init = parts[0]
            if init.startswith("paper"):
                continue
            init = None if init.startswith("none") else init
            gains[(size, init)] = parts[-1]
            for task, cell in zip(tasks, parts[1:-1]):
                mean = cell.split(" ± ")[0]
                wins = re.search(r"better on (\d+)/(\d+)", cell)
                cells.setdefault((size, init), {})[task] = (
                    mean,
                    (int(wins.group(1)), int(wins.group(2))) if wins else None,
                )
    return {"cells": cells, "gains": gains}


@pytest.mark.parametrize("label_set", SETS)
def test_card_fine_tuning_effects_are_the_numbers_of_docs_results(label_set):
    tables = _results_tables()
    effects = zoo.entry(f"et-small-mp20-{label_set}")["card"]["fine_tuning"]["effects"]
    sizes = {e["n"] for e in effects}
    assert sizes == {None, 100, 250, 1000}
    for e in effects:
        mine = tables["cells"][(e["n"], label_set)][e["task"]]
        base = tables["cells"][(e["n"], None)][e["task"]]
        assert f"{e['pretrained']:.4g}" == mine[0] and f"{e['baseline']:.4g}" == base[0]
        assert (e["better_on"], len(e["seeds"])) == mine[1]
        assert e["change_percent"] == pytest.approx(
            100 * (e["pretrained"] - e["baseline"]) / e["baseline"]
        )
    for n in sizes:
        # the table's "avg % improvement" is the mean over tasks of -change
        mean = -np.mean([e["change_percent"] for e in effects if e["n"] == n])
        assert f"{mean:+.1f}" == tables["gains"][(n, label_set)]
        assert len([e for e in effects if e["n"] == n]) == len(tables["cells"][(n, None)])


def test_resolve_a_path_a_name_a_damaged_file_and_an_unknown_name(tmp_path):
    run_ckpt = RUNS / "pretrain" / "gmpset1" / "best.pt"
    assert zoo.resolve(run_ckpt) == run_ckpt  # a file is itself
    assert zoo.resolve(str(run_ckpt)) == run_ckpt
    assert zoo.resolve(NAMES[1]) == zoo.ZOO_DIR / f"{NAMES[1]}.pt"
    copy = tmp_path / "zoo"
    shutil.copytree(zoo.ZOO_DIR, copy)
    damaged = copy / f"{NAMES[1]}.pt"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(TrainingError) as err:
        zoo.resolve(NAMES[1], zoo_dir=copy)
    message = str(err.value)
    assert "\n" not in message and str(damaged) in message and "sha256" in message
    assert zoo.resolve(NAMES[0], zoo_dir=copy) == copy / f"{NAMES[0]}.pt"  # others still fine
    with pytest.raises(zoo.UnknownModel) as err:
        zoo.resolve("et-small-mp20-eadset9")
    message = str(err.value)
    assert "\n" not in message and message.startswith("et-small-mp20-eadset9: neither")
    assert all(name in message for name in NAMES)


def test_add_turns_a_run_into_an_entry_and_keeps_to_the_budget(tmp_path, monkeypatch):
    run = RUNS / "pretrain" / "gmpset1"
    new = zoo.add(run, "x-gmp", "CC BY 4.0", sweep=RUNS, zoo_dir=tmp_path)
    assert (tmp_path / "x-gmp.pt").stat().st_size == new["bytes"]
    assert new["sha256"] == _sha256(tmp_path / "x-gmp.pt")
    assert json.loads((tmp_path / "zoo.json").read_text())["models"] == [new]
    # the committed card is what add computes (the effect included)
    shipped = zoo.entry("et-small-mp20-gmpset1")["card"]
    assert new["card"]["fine_tuning"]["effects"] == shipped["fine_tuning"]["effects"]
    for key in ("structures", "best_val_loss", "model", "pretraining_store", "labels"):
        assert new["card"][key] == shipped[key], key
    with pytest.raises(TrainingError, match="already in the zoo"):
        zoo.add(run, "x-gmp", "CC BY 4.0", zoo_dir=tmp_path)
    monkeypatch.setattr(zoo, "BUDGET_BYTES", new["bytes"] + 10)
    with pytest.raises(TrainingError, match="budget") as err:
        zoo.add(RUNS / "pretrain" / "wacsfset1", "y-wacsf", "CC BY 4.0", zoo_dir=tmp_path)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-gmp.pt", "zoo.json"]
    # the command line
    code = zoo.main(
        ["add", str(run), "--name", "z-gmp", "--licence", "CC BY 4.0", "--zoo-dir", str(tmp_path)]
    )
    assert code == 1  # over the (patched) budget: refused with one line, exit 1
    monkeypatch.setattr(zoo, "BUDGET_BYTES", 15_000_000)
    code = zoo.main(
        ["add", str(run), "--name", "z-gmp", "--licence", "CC BY 4.0", "--zoo-dir", str(tmp_path)]
    )
    assert code == 0 and [e["name"] for e in zoo.entries(tmp_path)] == ["x-gmp", "z-gmp"]
