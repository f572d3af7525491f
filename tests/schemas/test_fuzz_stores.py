"""Fuzz: damaged copies of a tiny store (random bytes flipped, random truncation) are read
through ``open_store`` and checked by ``fp-build verify``'s function; every read must return
the original record exactly or raise the project's named errors (StoreError / RecordError),
never another exception, a hang or a crash, and verify must never call a store with a wrong
record OK.

LMDB damage hits every part file (``graphs.mdb``, ``labels-<set>.mdb``); half the truncations
also make the manifest list the new size (``parts`` is outside its digest), so the files' own
checks are fuzzed, not only the size check. The damaged reads run in one child process per
store kind, so a crash (SIGBUS, SIGSEGV) or a
hang fails the test, with the trial that caused it, instead of killing pytest.
``FP_FUZZ_TRIALS`` and ``FP_FUZZ_SEED`` run it longer or differently (defaults: a few
seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

CHILD = r"""
import json, os, random, shutil, sys
from pathlib import Path
import numpy as np
from fingerprint_pretrain.builder.info import verify_store
from fingerprint_pretrain.schemas import RecordError, StoreError, open_store

pristine, work, kind, seed, trials = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], \
    int(sys.argv[4]), int(sys.argv[5])
expected = list(open_store(pristine))
if kind == "lmdb":  # every part file of the store
    parts = json.loads((pristine / "manifest.json").read_text())["parts"]
    targets = sorted(entry["file"] for entry in parts.values())
    assert len(targets) == 2, targets
else:
    targets = sorted(str(p.relative_to(pristine)) for p in pristine.rglob("*")
                     if p.is_file() and p.name != "rejected.csv")
rng = random.Random(seed)

def same(a, b):
    return a.keys() == b.keys() and all(
        a[k] == b[k] if k == "id" else
        (a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k], equal_nan=True)) for k in a)

for trial in range(trials):
    copy = work / f"{trial}{pristine.suffix}"
    shutil.copytree(pristine, copy)
    target = copy / rng.choice(targets)
    data = bytearray(target.read_bytes())
    if rng.random() < 0.75 and data:
        flips = [rng.randrange(len(data)) for _ in range(rng.randint(1, 4))]
        for k in flips:
            data[k] ^= rng.randrange(1, 256)
        damage = f"{target.relative_to(copy)}: bytes {flips} changed"
    else:
        keep = rng.randrange(len(data) + 1)
        data = data[:keep]
        damage = f"{target.relative_to(copy)}: truncated to {keep} bytes"
    target.write_bytes(bytes(data))
    if kind == "lmdb" and "truncated" in damage and rng.random() < 0.5:
        # the manifest lists the new size (its parts are outside the digest): the file's
        # own checks must catch the truncation
        manifest = json.loads((copy / "manifest.json").read_text())
        for entry in manifest["parts"].values():
            if entry["file"] == target.name:
                entry["bytes"] = len(data)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        damage += " (manifest lists that size)"
    print(json.dumps({"start": trial, "damage": damage}), flush=True)
    reads = []
    try:
        store = open_store(copy)
        store.num_atoms(), store.num_edges()
        for i in range(len(store)):
            try:
                reads.append("ok" if same(store[i], expected[i]) else "WRONG")
            except (StoreError, RecordError):
                reads.append("named")
    except (StoreError, RecordError):
        reads.append("named")
    except Exception as err:
        reads.append(f"other: {type(err).__name__}: {err}")
    try:
        verified, _ = verify_store(copy, progress=False)
    except Exception as err:
        verified = f"other: {type(err).__name__}: {err}"
    print(json.dumps({"trial": trial, "damage": damage, "reads": reads, "verified": verified}),
          flush=True)
    shutil.rmtree(copy)
"""


def fuzz(pristine: Path, kind: str, tmp_path: Path, trials: int) -> list[dict]:
    trials = int(os.environ.get("FP_FUZZ_TRIALS", trials))
    seed = int(os.environ.get("FP_FUZZ_SEED", 0))
    args = [str(pristine), str(tmp_path), kind, str(seed), str(trials)]
    try:
        result = subprocess.run(
            [sys.executable, "-c", CHILD, *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=max(120, trials),
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        last = out.strip().splitlines()[-1:] or ["(none)"]
        raise AssertionError(f"fuzz reader hung; last trial started: {last[0]}") from None
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    started = [line for line in lines if "start" in line]
    assert result.returncode == 0, (
        f"fuzz reader died (exit {result.returncode}) on {started[-1] if started else '-'}: "
        f"{result.stderr[-2000:]}"
    )
    done = [line for line in lines if "trial" in line]
    assert len(done) == trials
    return done


def check(done: list[dict]) -> None:
    for trial in done:
        bad = [r for r in trial["reads"] if r not in ("ok", "named")]
        assert not bad, f"{trial['damage']}: {bad[0]}"
        assert trial["verified"] in (True, False), f"{trial['damage']}: {trial['verified']}"
        if trial["verified"]:
            assert set(trial["reads"]) == {"ok"}, f"verify passed {trial['damage']}"
    # the damage was real: most trials were noticed (flips in unused bytes are not)
    noticed = sum("named" in t["reads"] for t in done)
    assert noticed > len(done) // 3


def test_damaged_lmdb_reads_are_exact_or_named_errors(tiny_lmdb, tmp_path):
    check(fuzz(tiny_lmdb, "lmdb", tmp_path, trials=200))


def test_damaged_zarr_reads_are_exact_or_named_errors(tiny_zarr, tmp_path):
    check(fuzz(tiny_zarr, "zarr", tmp_path, trials=40))
