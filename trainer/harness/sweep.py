"""``fp-train sweep PLAN.yaml``: the paper's experiment, resumable.

A plan (YAML) names a pre-training store and label sets, fine-tuning tasks, seeds, training-set
sizes and (optionally) pre-training epochs for the ablation; the sweep expands it into runs and
executes each one as its own ``fp-train`` process, skipping runs already finished
(``result.json``) and resuming interrupted ones (``--resume``). Stop it at any moment and start
it again: it continues where it stopped. Each run's configuration (the plan's keys for it) is
written to ``RUN_DIR/sweep_config.json``, and the run is
``fp-train MODE --config RUN_DIR/sweep_config.json --run-dir RUN_DIR --resume --no-progress``.

Plan keys (see ``experiments/*.yaml``)::

    extends: cpu_small.yaml               # optional: a follow-up of that plan (see load_plan)
    runs_dir: runs/paper-cpu              # default for --runs-dir (never inherited)
    model: {hidden_channels: 64, ...}     # TrainConfig keys shared by every run
    pretrain:
      store: ${FP_DATA}/stores/mp20_subset.lmdb
      labels: [wacsfset1, gmpset1, eadset1]
      config: {epochs: 40, batch_size: 16, save_every: 10}
    finetune:
      config: {epochs: 40, batch_size: 16}
      seeds: [111, 222, 333, 444, 555]
      inits: [none, wacsfset1, gmpset1, eadset1]    # none = from scratch (the baseline)
      # LABEL+adapt (e.g. eadset1+adapt): from LABEL's pre-trained model after task-adaptive
      # pre-training on the task's own structures (finetune --adapt-epochs); needs
      # adapt_epochs: K here or in the task, and takes adapt_on: train | all (default train)
      adapt_epochs: 10
      pretrain_epochs: [null]                        # null = best.pt; N = epochN.pt (ablation)
      tasks:
        - {name: jdft2d, store: ..., target: y, unit: meV/atom, train_sizes: [null],
           paper: {none: 57.6, wacsfset1: 44.0, gmpset1: 45.2, eadset1: 49.6}}
          # a task may also set its own seeds, inits, pretrain_epochs, adapt_epochs, adapt_on
          # and config (merged over finetune.config, e.g. {max_val: 250} for low-data runs)

Run directories: ``RUNS/pretrain/<label>/`` and
``RUNS/finetune/<task>/n<size|all>/<init>[-e<epoch>]/seed<seed>/`` (``<init>`` as written in
the plan: ``none``, ``eadset1``, ``eadset1+adapt``; the adaptation of a ``+adapt`` run is in
its ``adapt/`` folder). The three-way comparison of issue 19 (from scratch, general and
task-adaptive pre-training, paired by seed) is ``inits: [none, eadset1, eadset1+adapt]``.
``${VAR}`` in store paths is expanded; ``FP_DATA`` defaults to ``~/.cache/fingerprint-pretrain``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fingerprint_pretrain.schemas.locations import data_home
from fingerprint_pretrain.trainer.config import TrainConfig

__all__ = [
    "CONFIG_FILE",
    "Run",
    "expand_path",
    "expand_plan",
    "file_config",
    "load_plan",
    "run_sweep",
    "write_run_config",
]

# The configuration file the sweep writes into each run directory and passes to fp-train with
# --config (the trainer's own config.json, the resolved configuration, is another file).
CONFIG_FILE = "sweep_config.json"


@dataclass(frozen=True)
class Run:
    """One training run of a sweep."""

    mode: str  # pretrain | finetune
    run_dir: Path
    config: dict = field(hash=False)
    needs: Path | None = None  # checkpoint that must exist first (fine-tuning from it)
    task: str | None = None
    init: str | None = None  # label set of the pre-trained model, None = baseline
    train_size: int | None = None
    pretrain_epoch: int | None = None
    seed: int | None = None

    @property
    def done(self) -> bool:
        return (self.run_dir / "result.json").exists()


def expand_path(path: str) -> str:
    """``path`` with ``~`` and ``${VAR}`` expanded; ``FP_DATA`` defaults to
    :func:`fingerprint_pretrain.schemas.locations.data_home`."""
    os.environ.setdefault("FP_DATA", str(data_home()))
    return os.path.expandvars(os.path.expanduser(path))


def _merged(base: dict, over: dict) -> dict:
    """``over`` laid on ``base``: mappings merge key by key (recursively), lists and scalars
    replace what the base holds, ``null`` removes the key."""
    out = dict(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _read_plan(path: Path, chain: tuple[Path, ...]) -> dict:
    import yaml

    try:
        with open(path) as fh:
            plan = yaml.safe_load(fh)
    except FileNotFoundError:
        where = f" (extended by {chain[-1]})" if chain else ""
        raise FileNotFoundError(f"sweep plan {path} not found{where}") from None
    if plan is None:
        plan = {}
    if not isinstance(plan, dict):
        raise ValueError(f"{path}: a sweep plan is a YAML mapping, not {type(plan).__name__}")
    parent = plan.pop("extends", None)
    if parent is None:
        return plan
    if not isinstance(parent, str):
        raise ValueError(f"{path}: 'extends' names one plan file, got {parent!r}")
    base_path = (path.parent / os.path.expanduser(parent)).resolve()
    chain = (*chain, path.resolve())
    if base_path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, base_path))
        raise ValueError(f"{path}: 'extends' goes round in a circle: {cycle}")
    base = _read_plan(base_path, chain)
    # a follow-up never inherits where its base writes its runs
    base.pop("runs_dir", None)
    merged = _merged(base, plan)
    # runs_dir first, as a plan is written
    return {"runs_dir": merged.pop("runs_dir")} | merged if "runs_dir" in merged else merged


def load_plan(path: str | Path) -> dict:
    """The plan in ``path``, with any ``extends: BASE.yaml`` chain resolved.

    ``extends`` (a path relative to the plan's folder) makes the plan a follow-up of another:
    the base's sections are taken over, the follow-up's laid on them (mappings merge key by key,
    lists and scalars replace, ``null`` removes), except ``runs_dir``, which is never
    inherited. The result holds no ``extends`` key, so what a sweep saves as ``plan.yaml`` is
    self-contained.
    """
    path = Path(path)
    plan = _read_plan(path, ())
    if "finetune" not in plan:
        raise ValueError(f"{path}: a sweep plan needs at least a 'finetune' section")
    return plan


def _checked(config: dict, where: str) -> dict:
    known = set(TrainConfig.__dataclass_fields__)
    unknown = set(config) - known
    if unknown:
        raise ValueError(f"{where}: unknown configuration key(s) {sorted(unknown)}")
    return config


def _adaptation(init: str, task: dict, ft: dict) -> tuple[str, dict]:
    """(pre-training label set, adaptation configuration keys) of one of a plan's inits:
    ``LABEL`` (none) or ``LABEL+adapt`` (task-adaptive pre-training: ``adapt_epochs``, which
    the task or the finetune section must give, and ``adapt_on`` if either gives it)."""
    label, plus, how = str(init).partition("+")
    if not plus:
        return label, {}
    where = f"finetune.tasks[{task['name']}]"
    if how != "adapt" or label == "none":
        raise ValueError(f"{where}: init {init!r}: write LABEL or LABEL+adapt (e.g. eadset1+adapt)")
    epochs = task.get("adapt_epochs", ft.get("adapt_epochs"))
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(
            f"{where}: init {init} needs adapt_epochs >= 1 (in the task or in finetune), "
            f"got {epochs!r}"
        )
    keys = {"adapt_epochs": epochs}
    on = task.get("adapt_on", ft.get("adapt_on"))
    if on is not None:
        keys["adapt_on"] = on
    return label, keys


def expand_plan(plan: dict, runs_dir: str | Path) -> list[Run]:
    """Every run of the plan, pre-training first (fine-tuning runs depend on them)."""
    runs_dir = Path(runs_dir)
    model = _checked(dict(plan.get("model", {})), "model")
    runs = _pretrain_runs(plan.get("pretrain"), model, runs_dir)
    ft = plan["finetune"]
    base = {**model, **_checked(dict(ft.get("config", {})), "finetune.config")}
    for task in ft["tasks"]:
        runs += _task_runs(task, ft, base, runs_dir)
    return runs


def _pretrain_runs(pre: dict | None, model: dict, runs_dir: Path) -> list[Run]:
    """One pre-training run per label set of the plan's ``pretrain`` section (none without
    one)."""
    if not pre:
        return []
    runs = []
    for label in pre["labels"]:
        config = {
            **model,
            **_checked(dict(pre.get("config", {})), "pretrain.config"),
            "store": expand_path(pre["store"]),
            "labels": [label],
        }
        runs.append(Run("pretrain", runs_dir / "pretrain" / label, config, init=label))
    return runs


def _task_runs(task: dict, ft: dict, base: dict, runs_dir: Path) -> list[Run]:
    """The fine-tuning runs of one task: sizes × seeds × inits × pre-training epochs.

    A task may override the sweep-wide seeds, inits, pre-training epochs and settings
    (``ft``: the plan's finetune section; ``base``: its model and config keys)."""
    seeds = task.get("seeds", ft.get("seeds", [111]))
    task_base = {
        **base,
        **_checked(dict(task.get("config", {})), f"finetune.tasks[{task['name']}].config"),
    }
    inits = task.get("inits", ft.get("inits", ["none"]))
    runs = []
    # seed-major: a sweep stopped part-way through a task leaves complete paired
    # comparisons (baseline and every pre-trained model on the same splits) for the
    # seeds it finished, not every seed of some models and none of the others
    for size in task.get("train_sizes", [None]):
        for seed in seeds:
            for init in inits:
                label, adapting = _adaptation(init, task, ft)
                epochs = (
                    [None]
                    if init == "none"
                    else task.get("pretrain_epochs", ft.get("pretrain_epochs", [None]))
                )
                for pre_epoch in epochs:
                    where = (size, seed, init, label, pre_epoch)
                    runs.append(_finetune_run(task, task_base, adapting, runs_dir, *where))
    return runs


def _finetune_run(
    task: dict,
    task_base: dict,
    adapting: dict,
    runs_dir: Path,
    size: int | None,
    seed: int,
    init: str,
    label: str,
    pre_epoch: int | None,
) -> Run:
    """One fine-tuning run of ``task``: training-set ``size`` (None = the full split),
    ``seed``, ``init`` as the plan writes it (``none``, ``LABEL``, ``LABEL+adapt``; ``label``:
    its pre-training label set), from the pre-training's ``best.pt`` or ``epoch<pre_epoch>.pt``."""
    name = init if pre_epoch is None else f"{init}-e{pre_epoch}"
    needs = None
    if init != "none":
        ckpt = "best.pt" if pre_epoch is None else f"epoch{pre_epoch}.pt"
        needs = runs_dir / "pretrain" / label / ckpt
    config = {
        **task_base,
        "store": expand_path(task["store"]),
        "labels": [task["target"]],
        "seed": seed,
        "max_train": size,
        "init": str(needs) if needs else None,
        **adapting,
    }
    size_dir = f"n{size}" if size else "nall"
    return Run(
        "finetune",
        runs_dir / "finetune" / task["name"] / size_dir / name / f"seed{seed}",
        config,
        needs,
        task["name"],
        None if init == "none" else init,
        size,
        pre_epoch,
        seed,
    )


def file_config(run: Run) -> dict:
    """What the run's configuration file holds: the plan's keys for the run, those set to
    ``None`` left out (the trainer's default applies, as when the key is not given)."""
    return {key: value for key, value in run.config.items() if value is not None}


def write_run_config(run: Run) -> Path:
    """Write the run's configuration (:func:`file_config`) as JSON to
    ``RUN_DIR/sweep_config.json`` (:data:`CONFIG_FILE`), the file its fp-train command reads
    with ``--config``; returns the path."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    path = run.run_dir / CONFIG_FILE
    path.write_text(json.dumps(file_config(run), indent=2) + "\n")
    return path


def _command(run: Run) -> list[str]:
    """The fp-train command line of a run: its configuration file (:func:`write_run_config`),
    its run directory, ``--resume`` always (a finished or new run is unaffected)."""
    return [
        sys.executable,
        "-m",
        "fingerprint_pretrain.trainer.cli",
        run.mode,
        "--config",
        str(run.run_dir / CONFIG_FILE),
        "--run-dir",
        str(run.run_dir),
        "--resume",
        "--no-progress",
    ]


def run_sweep(
    plan: dict, runs_dir: str | Path, parallel: int = 1, dry_run: bool = False, log=print
) -> dict:
    """Run every unfinished run of ``plan`` (``parallel`` at a time, one CPU thread each when
    parallel > 1). Returns counts ``{"done", "ran", "failed", "waiting"}``.

    ``dry_run``: write nothing, only log each unfinished run's command and the configuration
    its file would hold."""
    runs = expand_plan(plan, runs_dir)
    todo = [r for r in runs if not r.done]
    log(f"{len(runs)} runs in the plan, {len(runs) - len(todo)} already done, {len(todo)} to do")
    if dry_run:
        for r in todo:
            log(" ".join(_command(r)))
            log(f"  {CONFIG_FILE}: {json.dumps(file_config(r))}")
        return {"done": len(runs) - len(todo), "ran": 0, "failed": 0, "waiting": len(todo)}
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    import yaml

    (Path(runs_dir) / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    ran, failed = _execute(todo, parallel, log)
    done = sum(r.done for r in runs)
    return {"done": done, "ran": ran, "failed": len(failed), "waiting": len(runs) - done}


def _execute(todo: list[Run], parallel: int, log) -> tuple[int, set[Path]]:
    """Run ``todo`` in order, ``parallel`` processes at a time, each fine-tuning run once its
    pre-training has finished. Returns (runs executed, run directories that failed or were
    skipped because what they need failed)."""
    env = dict(os.environ)
    if parallel > 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    failed: set[Path] = set()
    running: dict[subprocess.Popen, tuple[Run, object]] = {}
    ran = 0
    pending = list(todo)
    while pending or running:
        # start what can start: its pre-trained checkpoint exists, or nothing it needs failed
        for run in list(pending):
            if len(running) >= parallel:
                break
            state = _readiness(run, pending, running, failed)
            if state == "wait":
                continue
            pending.remove(run)
            if state == "skip":
                failed.add(run.run_dir)
                log(
                    f"skip {run.run_dir}: {run.needs} not available"
                    + (" (its pre-training failed)" if run.needs.parent in failed else "")
                )
                continue
            proc, logfile = _start(run, env)
            running[proc] = (run, logfile)
            log(f"start {run.run_dir}")
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            run, logfile = running.pop(proc)
            logfile.close()
            ran += 1
            if proc.returncode != 0 or not run.done:
                failed.add(run.run_dir)
                log(f"FAILED {run.run_dir} (exit {proc.returncode}; see train.log)")
            else:
                result = json.loads((run.run_dir / "result.json").read_text())
                log(f"done  {run.run_dir}: test MAE {result.get('test_mae', float('nan')):.5g}")
    return ran, failed


def _readiness(run: Run, pending: list[Run], running: dict, failed: set[Path]) -> str:
    """``start``, ``wait`` (its pre-training is still to run or running: wait for the whole
    run, not its first best.pt) or ``skip`` (the checkpoint it needs will not come)."""
    if run.needs is None:
        return "start"
    source = run.needs.parent  # the pre-training run
    scheduled = any(r.run_dir == source for r, _ in running.values()) or any(
        r.run_dir == source for r in pending
    )
    finished = (source / "result.json").exists() and run.needs.exists()
    if not finished and scheduled:
        return "wait"
    if not finished and (source in failed or not run.needs.exists()):
        return "skip"
    return "start"


def _start(run: Run, env: dict) -> tuple[subprocess.Popen, object]:
    """Write the run's configuration file and start its fp-train process (output appended to
    ``train.log``); returns the process and the open log file."""
    write_run_config(run)
    logfile = open(run.run_dir / "train.log", "a")
    proc = subprocess.Popen(_command(run), stdout=logfile, stderr=subprocess.STDOUT, env=env)
    return proc, logfile
