"""The experiment harness on a tiny real run: sweep (resumable, skipping finished runs) and the
report (numbers checked against the runs' own result files, figures written)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from fingerprint_pretrain.trainer.harness.figures import _thin_ticks
from fingerprint_pretrain.trainer.harness.report import write_report
from fingerprint_pretrain.trainer.harness.results import improvement
from fingerprint_pretrain.trainer.harness.sweep import CONFIG_FILE, expand_plan, run_sweep

from tests.builder.helpers import MP_SAMPLE, build

MODEL = {
    "hidden_channels": 16,
    "num_layers": 1,
    "num_rbf": 8,
    "num_heads": 2,
    "head_channels": 16,
    "num_workers": 0,
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    store = root / "mp.lmdb"
    build(store, MP_SAMPLE, targets=["band_gap"], descriptors=["wacsfset1"])
    plan = {
        "model": MODEL,
        "pretrain": {
            "store": str(store),
            "labels": ["wacsfset1"],
            "config": {"epochs": 2, "batch_size": 8, "save_every": 1},
        },
        "finetune": {
            "config": {"epochs": 2, "batch_size": 8},
            "seeds": [111, 222],
            "inits": ["none", "wacsfset1"],
            "pretrain_epochs": [None, 1],
            "tasks": [
                {
                    "name": "gap",
                    "store": str(store),
                    "target": "band_gap",
                    "unit": "eV",
                    "train_sizes": [None, 12],
                    "paper": {"none": 0.3, "wacsfset1": 0.25},
                }
            ],
        },
    }
    runs = root / "runs"
    counts = run_sweep(plan, runs, parallel=2, log=lambda *_: None)
    return plan, runs, counts


def test_plan_expands_to_every_combination(swept):
    plan, runs, _ = swept
    expanded = expand_plan(plan, runs)
    # 1 pre-training + 2 sizes × (baseline + best + epoch-1 checkpoint) × 2 seeds
    assert len(expanded) == 1 + 2 * 3 * 2
    assert expanded[0].mode == "pretrain"
    ablation = [r for r in expanded if r.pretrain_epoch == 1]
    assert all(str(r.needs).endswith("pretrain/wacsfset1/epoch1.pt") for r in ablation)
    # seed-major within a size: all models of seed 111 before any of seed 222
    full = [r.seed for r in expanded if r.mode == "finetune" and r.train_size is None]
    assert full == [111] * 3 + [222] * 3


def test_task_settings_override_the_sweep_ones(swept):
    plan, runs, _ = swept
    task = dict(plan["finetune"]["tasks"][0], config={"max_val": 5}, seeds=[7])
    plan = {**plan, "finetune": {**plan["finetune"], "tasks": [task, plan["finetune"]["tasks"][0]]}}
    expanded = [r for r in expand_plan(plan, runs) if r.mode == "finetune"]
    own = [r for r in expanded if r.seed == 7]
    assert own and all(r.config["max_val"] == 5 and r.config["epochs"] == 2 for r in own)
    assert all("max_val" not in r.config for r in expanded if r.seed != 7)
    bad = dict(task, config={"max_vall": 5})
    with pytest.raises(ValueError, match=r"tasks\[gap\]\.config.*max_vall"):
        expand_plan({**plan, "finetune": {**plan["finetune"], "tasks": [bad]}}, runs)


def test_sweep_ran_everything_then_skips_and_resumes(swept):
    plan, runs, counts = swept
    assert counts == {"done": 13, "ran": 13, "failed": 0, "waiting": 0}
    again = run_sweep(plan, runs, log=lambda *_: None)
    assert again["ran"] == 0 and again["done"] == 13
    victim = runs / "finetune" / "gap" / "n12" / "wacsfset1" / "seed222"
    first = json.loads((victim / "result.json").read_text())
    (victim / "result.json").unlink()  # as if killed before the end
    again = run_sweep(plan, runs, log=lambda *_: None)
    assert again["ran"] == 1 and again["done"] == 13
    assert json.loads((victim / "result.json").read_text())["test_mae"] == pytest.approx(
        first["test_mae"]
    )
    # fine-tuning with max_train kept 12 training structures; the pre-trained init was used
    cfg = json.loads((victim / "config.json").read_text())
    assert cfg["max_train"] == 12 and cfg["init"].endswith("pretrain/wacsfset1/best.pt")
    assert len(np.load(victim / "splits.npz")["train"]) == 12


def test_each_run_got_its_configuration_as_a_file(swept, tmp_path):
    """The sweep wrote each run's plan keys (None left out) to sweep_config.json, and the run
    trained with them (its own config.json); run directories without that file, as the
    trainer alone left them, still count as done; a dry run writes nothing."""
    plan, runs, _ = swept
    for run in expand_plan(plan, runs):
        given = json.loads((run.run_dir / CONFIG_FILE).read_text())
        assert given == {k: v for k, v in run.config.items() if v is not None}
        used = json.loads((run.run_dir / "config.json").read_text())
        assert {k: used[k] for k in given} == given, run.run_dir
        assert used["mode"] == run.mode and used["run_dir"] == str(run.run_dir)
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy, ignore=shutil.ignore_patterns(CONFIG_FILE))
    log: list[str] = []
    again = run_sweep(plan, copy, dry_run=True, log=log.append)
    assert again == {"done": 13, "ran": 0, "failed": 0, "waiting": 0}
    victim = copy / "finetune" / "gap" / "nall" / "none" / "seed111"
    (victim / "result.json").unlink()
    log.clear()
    assert run_sweep(plan, copy, dry_run=True, log=log.append)["waiting"] == 1
    assert log[1].split()[3:] == [
        "finetune", "--config", str(victim / CONFIG_FILE), "--run-dir", str(victim),
        "--resume", "--no-progress",
    ]  # fmt: skip
    assert json.loads(log[2].split(": ", 1)[1])["seed"] == 111
    assert not list(copy.rglob(CONFIG_FILE))


def test_report_table_matches_the_runs(swept):
    _, runs, _ = swept
    report = write_report(runs, tsne=True)
    full = report.read_text()
    # the section of the full training split
    text = full.split("## Test MAE, full training split")[1].split("###")[0]
    maes = {}
    for init in ("none", "wacsfset1"):
        values = [
            json.loads(
                (runs / "finetune/gap/nall" / init / f"seed{s}" / "result.json").read_text()
            )["test_mae"]
            for s in (111, 222)
        ]
        maes[init] = values
        mean, std = np.mean(values), np.std(values, ddof=1)
        label = "none (baseline)" if init == "none" else init
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        if init == "none":
            assert f"{mean:.4g} ± {std:.2g} (2) |" in row
        else:
            better = sum(a < b for a, b in zip(values, maes["none"]))
            assert f"{mean:.4g} ± {std:.2g} (2; better on {better}/2) |" in row
    gain = improvement(np.mean(maes["none"]), np.mean(maes["wacsfset1"]))
    row = next(line for line in text.splitlines() if line.startswith("| wacsfset1 |"))
    assert row.endswith(f"| {gain:+.1f} |")
    assert "| paper: wacsfset1 | 0.25 | +16.7 |" in text
    assert re.search(r"## Test MAE, 12 training structures", full)
    for name in (
        "parity_gap.png",
        "learning_pretrain.png",
        "learning_gap.png",
        "data_efficiency.png",
        "epoch_ablation.png",
        "tsne.png",
    ):
        assert (report.parent / name).stat().st_size > 1000, name
        assert f"]({name})" in full


def test_epoch_ablation_is_paired_with_baseline_and_best_checkpoint(swept):
    _, runs, _ = swept
    text = write_report(runs, tsne=False).read_text()
    section = text.split("## Epoch ablation")[1].split("##")[0]
    section = section.split("gap (training structures: full split)")[1].split("gap (")[0]
    # the best pre-training checkpoint's epoch, read independently from the metrics file
    val = np.loadtxt(runs / "pretrain/wacsfset1/metrics.csv", delimiter=",", skiprows=1)[:, 2]
    best = int(np.argmin(val)) + 1
    epochs = sorted({0, 1, best})
    header = "| pre-training | " + " | ".join(f"{e} epochs" for e in epochs) + " |"
    assert header in section
    row = next(line for line in section.splitlines() if line.startswith("| wacsfset1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]

    def mae(name, seed):
        path = runs / "finetune/gap/nall" / name / f"seed{seed}" / "result.json"
        return json.loads(path.read_text())["test_mae"]

    expected = {0: [mae("none", s) for s in (111, 222)]}
    expected[1] = [mae("wacsfset1-e1", s) for s in (111, 222)]
    if best != 1:
        expected[best] = [mae("wacsfset1", s) for s in (111, 222)]
    for e, cell in zip(epochs, cells):
        values = expected[e]
        mark = ", *best*" if e == best else ""
        assert cell == f"{np.mean(values):.4g} ± {np.std(values, ddof=1):.2g} (2{mark})", e


def test_pretraining_table_times_and_device(swept):
    _, runs, _ = swept
    text = write_report(runs, tsne=False).read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| wacsfset1 | 2 |"))
    seconds = np.loadtxt(runs / "pretrain/wacsfset1/metrics.csv", delimiter=",", skiprows=1)[:, 5]
    assert f"| {np.median(seconds):.1f} | {seconds.sum() / 60:.1f} |" in row
    result = json.loads((runs / "pretrain/wacsfset1/result.json").read_text())
    assert result["device"] in row and "thread" in result["device"]  # CPU in CI
    assert isinstance(result["bf16_autocast"], bool)


def test_training_counts_come_from_the_saved_splits(swept):
    from fingerprint_pretrain.trainer.harness.results import collect

    _, runs, _ = swept
    rows = collect(runs)
    assert {r["n_train"] for r in rows if r["n"] == 12} == {12}
    full = {r["n_train"] for r in rows if r["n"] is None}
    assert len(full) == 1 and full.pop() > 12


def test_plan_with_unknown_keys_is_refused(tmp_path):
    bad = {"model": {"hidden_chanels": 8}, "finetune": {"tasks": []}}
    with pytest.raises(ValueError, match="hidden_chanels"):
        expand_plan(bad, tmp_path)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"pretrain": {}}))
    from fingerprint_pretrain.trainer.harness.sweep import load_plan

    with pytest.raises(ValueError, match="finetune"):
        load_plan(tmp_path / "p.yaml")


def test_report_as_a_markdown_file_with_a_figure_folder(swept, tmp_path):
    _, runs, _ = swept
    path = write_report(runs, tmp_path / "results.md", tsne=False)
    text = path.read_text()
    assert path == tmp_path / "results.md"
    assert (
        "](results/parity_gap.png)" in text and (tmp_path / "results" / "parity_gap.png").exists()
    )
    assert "fp-train report" in text and "hidden_channels 16" in text
    assert "## Notes" not in text
    (runs / "notes.md").write_text("Pre-training helped on 2 of 2 seeds.\n")
    try:
        text = write_report(runs, tmp_path / "results.md", tsne=False).read_text()
    finally:
        (runs / "notes.md").unlink()
    assert "## Notes\n\nPre-training helped on 2 of 2 seeds." in text


def test_follow_up_plan_extends_its_base(tmp_path):
    """A plan with ``extends`` takes its base's sections and lays its own on them: mappings
    merge key by key, lists and scalars replace, null removes; runs_dir is never inherited."""
    from fingerprint_pretrain.trainer.harness.sweep import load_plan

    base = {
        "runs_dir": "runs/base",
        "model": {"hidden_channels": 64, "num_layers": 4, "lr": 3e-4},
        "pretrain": {
            "store": "a.lmdb",
            "labels": ["wacsfset1", "eadset1"],
            "config": {"epochs": 30},
        },
        "finetune": {"seeds": [111, 222], "inits": ["none", "eadset1"], "tasks": [{"name": "x"}]},
    }
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "plans" / "sub").mkdir()
    follow = {
        "extends": "../base.yaml",  # relative to the follow-up's own folder
        "runs_dir": "runs/follow",
        "model": {"lr": 1e-3, "num_layers": None},
        "pretrain": {"store": "b.lmdb", "labels": ["eadset1"]},
        "finetune": {"tasks": [{"name": "y"}]},
    }
    (tmp_path / "plans" / "sub" / "follow.yaml").write_text(yaml.safe_dump(follow))
    plan = load_plan(tmp_path / "plans" / "sub" / "follow.yaml")
    assert plan == {
        "runs_dir": "runs/follow",
        "model": {"hidden_channels": 64, "lr": 1e-3},
        "pretrain": {"store": "b.lmdb", "labels": ["eadset1"], "config": {"epochs": 30}},
        "finetune": {"seeds": [111, 222], "inits": ["none", "eadset1"], "tasks": [{"name": "y"}]},
    }
    # a follow-up that names no runs_dir gets none (not its base's folder)
    del follow["runs_dir"]
    (tmp_path / "plans" / "sub" / "follow.yaml").write_text(yaml.safe_dump(follow))
    assert "runs_dir" not in load_plan(tmp_path / "plans" / "sub" / "follow.yaml")


def test_extends_errors_name_the_files(tmp_path):
    from fingerprint_pretrain.trainer.harness.sweep import load_plan

    (tmp_path / "a.yaml").write_text("extends: b.yaml\nfinetune: {tasks: []}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="circle") as err:
        load_plan(tmp_path / "a.yaml")
    assert "a.yaml" in str(err.value) and "b.yaml" in str(err.value)
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\nfinetune: {tasks: []}\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml.*extended by .*c\.yaml"):
        load_plan(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: [a.yaml, b.yaml]\nfinetune: {tasks: []}\n")
    with pytest.raises(ValueError, match="one plan file"):
        load_plan(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="e.yaml.*mapping"):
        load_plan(tmp_path / "e.yaml")


@pytest.mark.parametrize(
    "plan_file", sorted(p.name for p in (Path(__file__).parents[2] / "experiments").glob("*.yaml"))
)
def test_committed_plans_expand(plan_file, tmp_path):
    """The experiment plans in experiments/ are valid (known keys, every run expands)."""
    from fingerprint_pretrain.trainer.harness.sweep import load_plan

    plan = load_plan(Path(__file__).parents[2] / "experiments" / plan_file)
    runs = expand_plan(plan, tmp_path)
    finetune = [r for r in runs if r.mode == "finetune"]
    assert finetune and all(r.seed in (111, 222, 333, 444, 555) for r in finetune)
    assert all(r.needs is None or r.needs.name.endswith(".pt") for r in finetune)


def test_paired_p_value_against_the_closed_form():
    """Three pairs: the t distribution with 2 degrees of freedom has the closed-form CDF
    1/2 + t / (2 sqrt(2 + t²)), so p = 1 - |t| / sqrt(2 + t²)."""
    from fingerprint_pretrain.trainer.harness.report import summary_table
    from fingerprint_pretrain.trainer.harness.results import paired_p

    base, pre = [50.0, 61.0, 47.0], [44.0, 52.0, 46.0]
    d = np.subtract(base, pre)
    t = d.mean() / (d.std(ddof=1) / np.sqrt(3))
    expected = 1 - abs(t) / np.sqrt(2 + t * t)
    assert paired_p(base, pre) == pytest.approx(expected, rel=1e-10)
    assert paired_p(base[:2], pre[:2]) is None
    rows = [
        {"task": "t", "n": None, "init": init, "pretrain_epoch": None, "seed": s, "test_mae": v}
        for init, values in ((None, base), ("eadset1", pre))
        for s, v in zip((111, 222, 333), values)
    ]
    table = summary_table(rows, None, ["t"], [None, "eadset1"], {})
    assert f"better on 3/3, p={expected:.2g})" in table[3]


def test_log_axis_ticks_are_the_run_sizes_without_crowding():
    # 250 and 258 sit 3 % apart on a log axis: their labels would overlap, keep the first
    assert _thin_ticks({1000, 250, 258, 3300}) == [250, 1000, 3300]
    assert _thin_ticks({100}) == [100]
    assert _thin_ticks({0, 100, 129, 130}) == [100, 130]
