"""``fp-build add`` on a store of parts while a training run reads it (issue 23 item 3).

A small store (``--n`` structures of jdft2d, the authors' MatDeepLearn JSON in
../shared/datasets, else of ``examples/mp_20_sample.csv``) is built with ``wacsfset1``. Then
``fp-train pretrain --store S --descriptor wacsfset1 --seed 1`` (a small ET) runs twice, each a
separate process:

1. alone;
2. with ``fp-build add S --descriptor gmpset1`` (``--add``) started in another process as soon
   as the training has set itself up (its run folder holds ``splits.npz``), then, back to back,
   ``fp-build add S --descriptor gmpset1 --force`` (the part and the manifest written again) for
   as long as the training runs: writes to the store cover every epoch's reads (a DataLoader
   worker, ``--num-workers``, opens the store afresh each epoch).

Independent check that the reader saw correct records throughout: with the same seed and the
same records read, the two runs' ``metrics.csv`` (train loss, validation loss and MAE, lr,
steps per epoch; not the seconds) and test MAE must be identical to the last digit. The adds
must overlap the training's reads (the first one running at the training's set-up, the last
ending after the last epoch's line: wall-clock timestamps of this script, ``time.time()``),
every add must end with status 0, and the store must then verify (``fp-build verify``) and list
the added set.

Run: ``python bench/bench_add_while_training.py`` (about a minute on two shared cores);
``--json PATH`` writes the result; ``bench/results/add_while_training.md`` records it.
``tests/builder/test_parts.py`` runs it as a slow test.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
JDFT2D = REPO.parent / "shared" / "datasets" / "mdl_jdft2d.json.gz"
MP_SAMPLE = REPO / "examples" / "mp_20_sample.csv"
BIN = Path(sys.executable).parent
#: a small ET: a few seconds an epoch on one CPU core
MODEL = [
    "--hidden-channels", "16", "--num-layers", "1", "--num-heads", "2",
    "--head-channels", "16", "--num-rbf", "8", "--batch-size", "8",
]  # fmt: skip
#: metrics.csv columns that must be equal (the seconds differ)
COMPARED = ("epoch", "train_loss", "val_loss", "val_mae", "lr", "steps")


def small_input(folder: Path, n: int) -> Path:
    """The first ``n`` structures of jdft2d (MatDeepLearn JSON), else of the mp_20 sample."""
    if JDFT2D.is_file():
        with gzip.open(JDFT2D, "rt") as fh:
            rows = json.load(fh)[:n]
        path = folder / f"jdft2d_{len(rows)}.json"
        path.write_text(json.dumps(rows))
        return path
    csv.field_size_limit(sys.maxsize)
    with open(MP_SAMPLE, newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    path = folder / f"mp20_{len(rows)}.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def child_env() -> dict[str, str]:
    """One thread per process (the same arithmetic in both runs; two shared cores); unbuffered
    output, so that each epoch's line is timestamped when it is printed."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def fp(tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``fp-build`` / ``fp-train`` of this interpreter's environment."""
    done = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, env=child_env())
    if check and done.returncode:
        raise SystemExit(f"{tool} {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done


def train_args(store: Path, run_dir: Path, epochs: int, workers: int) -> list[str]:
    return [
        str(BIN / "fp-train"), "pretrain", "--store", str(store), "--descriptor", "wacsfset1",
        "--epochs", str(epochs), "--seed", "1", *MODEL, "--num-workers", str(workers),
        "--device", "cpu", "--no-progress", "--run-dir", str(run_dir),
    ]  # fmt: skip


def metrics(run_dir: Path) -> list[dict]:
    """The compared columns of a run's ``metrics.csv``, as written (strings)."""
    with open(run_dir / "metrics.csv", newline="") as fh:
        return [{k: row[k] for k in COMPARED} for row in csv.DictReader(fh)]


def test_mae(run_dir: Path) -> float | None:
    result = json.loads((run_dir / "result.json").read_text())
    return result.get("test_mae", result.get("test", {}).get("mae"))


def train_alone(store: Path, run_dir: Path, epochs: int, workers: int) -> float:
    """Training run 1; its wall seconds."""
    start = time.time()
    done = subprocess.run(
        train_args(store, run_dir, epochs, workers), capture_output=True, text=True,
        env=child_env(),
    )  # fmt: skip
    if done.returncode:
        raise SystemExit(f"training alone failed:\n{done.stdout}{done.stderr}")
    return time.time() - start


def train_with_add(
    store: Path, run_dir: Path, epochs: int, workers: int, add: list[str], timeout: float
) -> dict:
    """Training run 2 with ``fp-build add`` started once the training has set itself up, then
    again with ``--force`` (the part and the manifest rewritten) as long as the training runs,
    so that writes cover all its epochs' reads; the timestamps (s since the training started)
    and the exit statuses."""
    start = time.time()
    train = subprocess.Popen(
        train_args(store, run_dir, epochs, workers), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=child_env(),
    )  # fmt: skip
    lines: list[tuple[float, str]] = []  # (s since the start, line) of the training's output
    closed: list[float] = []  # when the training closed its output (it ended), s

    def read() -> None:
        lines.extend((time.time() - start, line) for line in train.stdout)
        closed.append(time.time() - start)

    reader = threading.Thread(target=read)
    reader.start()
    while not (run_dir / "splits.npz").is_file():
        if train.poll() is not None or time.time() - start > timeout:
            train.kill()
            reader.join()
            raise SystemExit("training never set up:\n" + "".join(t for _, t in lines))
        time.sleep(0.05)
    adds = []
    while not adds or (adds[-1]["rc"] == 0 and train.poll() is None):
        began = time.time()
        done = subprocess.run(
            [str(BIN / "fp-build"), "add", str(store), *(a for s in add for a in ("-d", s)),
             "-j", "1", "-q", *(["--force"] if adds else [])],
            capture_output=True, text=True, env=child_env(),
        )  # fmt: skip
        adds.append(
            {
                "start_s": round(began - start, 2),
                "end_s": round(time.time() - start, 2),
                "force": bool(adds),
                "rc": done.returncode,
                "training_running": train.poll() is None,
                "output": (done.stdout + done.stderr)[-2000:],
            }
        )
    try:
        train.wait(timeout=timeout)
    finally:
        if train.poll() is None:
            train.kill()
        reader.join()
    return {
        "train_rc": train.returncode,
        "train_output": "".join(line for _, line in lines)[-2000:],
        "adds": adds,
        "epoch_ends_s": [round(t, 2) for t, line in lines if line.startswith("epoch ")],
        "train_end_s": round(closed[0], 2) if closed else None,
    }


def run(
    work: Path, n: int = 150, epochs: int = 3, workers: int = 1, add: tuple[str, ...] = ("gmpset1",)
) -> dict:
    """The whole measurement in folder ``work``; returns its result (see the module
    docstring); ``result["ok"]`` says whether every check passed."""
    t0 = time.time()
    source = small_input(work, n)
    store = work / "S.lmdb"
    fp("fp-build", "build", str(source), "-o", str(store), "-d", "wacsfset1", "-j", "1", "-q")
    alone_s = train_alone(store, work / "alone", epochs, workers)
    both = train_with_add(store, work / "with_add", epochs, workers, list(add), timeout=600)
    verify = fp("fp-build", "verify", str(store), "-q", check=False)
    listed = json.loads((store / "manifest.json").read_text())["descriptors"]
    same_metrics = both["train_rc"] == 0 and metrics(work / "alone") == metrics(work / "with_add")
    same_test = both["train_rc"] == 0 and test_mae(work / "alone") == test_mae(work / "with_add")
    # the adds, back to back, ran while the epochs read the store: the first one from the
    # training's set-up, the last one ended after the last epoch's line
    adds, ends = both["adds"], both["epoch_ends_s"]
    overlapped = bool(ends and adds[0]["training_running"] and adds[-1]["end_s"] >= ends[-1])
    adds_ok = all(a["rc"] == 0 for a in adds)
    result = {
        "cpu": cpu_name(),
        "input": source.name,
        "structures": n,
        "epochs": epochs,
        "num_workers": workers,
        "added": list(add),
        "alone_s": round(alone_s, 2),
        "train_rc": both["train_rc"],
        "adds": [{k: v for k, v in a.items() if k != "output"} for a in adds],
        "epoch_ends_s": ends,
        "train_end_s": both["train_end_s"],
        "metrics_alone": metrics(work / "alone"),
        "metrics_identical": same_metrics,
        "test_mae": [test_mae(work / "alone"), test_mae(work / "with_add") if same_test else None],
        "test_mae_identical": same_test,
        "overlapped": overlapped,
        "verify_rc": verify.returncode,
        "sets_listed": list(listed),
        "total_s": round(time.time() - t0, 1),
    }
    result["ok"] = bool(
        same_metrics
        and same_test
        and overlapped
        and adds_ok
        and verify.returncode == 0
        and all(s in listed for s in add)
    )
    if not result["ok"]:
        result["train_output"] = both["train_output"]
        result["add_output"] = [a["output"] for a in adds if a["rc"]]
        result["verify_output"] = verify.stdout + verify.stderr
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=150, help="structures in the store")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--add", action="append", help="label set(s) to add (default gmpset1)")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--keep", type=Path, help="work in this folder (kept) instead of a tmp one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fp-add-train-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = run(work, args.n, args.epochs, args.num_workers, tuple(args.add or ["gmpset1"]))
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
