"""Concurrent use of one store: a second writer is refused by the store lock, readers keep
reading correct records while ``add`` commits, and ``kill -9`` of fp-build ends its workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fingerprint_pretrain.builder.add import add_descriptors
from fingerprint_pretrain.builder.bookkeeping import LOCK_NAME, StoreBusyError
from fingerprint_pretrain.builder.parts import file_sha256
from fingerprint_pretrain.schemas import open_store
from fingerprint_pretrain.schemas.store import compute_hashes

from tests.builder.helpers import MP_SAMPLE, PEROV_SAMPLE, build, read_csv, write_csv

PEROV = {"id_column": "castelli_id", "targets": ["heat_all"]}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def graph_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("concurrency") / "graphs.lmdb"
    build(out, PEROV_SAMPLE, **PEROV)
    return out


def python(code: str, *args) -> subprocess.Popen:
    """A Python subprocess running ``code`` from the repository root."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_holder(directory: Path, proc: subprocess.Popen, timeout: float = 60) -> dict:
    """The lock file's content once ``proc`` has taken the lock of ``directory``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            info = json.loads((directory / LOCK_NAME).read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if info.get("pid") == proc.pid:
            return info
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError(f"{proc.pid} never took the lock of {directory}")


HOLD_LOCK = (
    "import sys, time\n"
    "from fingerprint_pretrain.builder.bookkeeping import StoreLock\n"
    "StoreLock(sys.argv[1], sys.argv[1], 'add').acquire()\n"
    "time.sleep(120)\n"
)


def test_second_build_on_the_same_output_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "mp.lmdb"
    first = subprocess.Popen(
        [sys.executable, "-m", "fingerprint_pretrain.builder.cli", "build", MP_SAMPLE, "--out", out]
        + ["-d", "wacsfset1", "-j", "1", "--chunk-size", "1", "-q"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        holder = wait_for_holder(tmp_path / "mp.lmdb.partial", first)
        assert holder["action"] == "build"
        started = time.time()
        with pytest.raises(StoreBusyError) as refused:
            build(out, MP_SAMPLE, descriptors=["wacsfset1"])
        assert time.time() - started < 2  # refused at once, not after waiting
        message = str(refused.value)
        assert f"{out} is in use by another fp-build (fp-build build, PID {first.pid}" in message
        assert "wait for it to finish or stop it, then rerun" in message
        stdout, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    # the refused build touched nothing: the first one's store is complete and consistent
    store = open_store(out)
    assert len(store) == 40 and store.descriptor_names == ["wacsfset1"]
    assert compute_hashes(store)["content_hash"] == store.content_hash
    assert f"content hash {store.content_hash}" in stdout
    assert not (out / LOCK_NAME).exists() and not out.with_name("mp.lmdb.partial").exists()


def test_second_add_is_refused_and_no_set_is_lost(graph_store, tmp_path):
    store = tmp_path / "s.lmdb"
    shutil.copytree(graph_store, store)
    first = python(
        "import sys\n"
        "from fingerprint_pretrain.builder.add import add_descriptors\n"
        "add_descriptors(sys.argv[1], ['wacsfset2'], jobs=1, chunk_size=1, progress=False)\n",
        store,
    )
    try:
        wait_for_holder(store, first)
        with pytest.raises(StoreBusyError, match=rf"PID {first.pid} "):
            add_descriptors(store, ["wacsfset1"], jobs=1, progress=False)
        _, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    add_descriptors(store, ["wacsfset1"], jobs=1, progress=False)
    s = open_store(store)
    assert sorted(s.descriptor_names) == ["wacsfset1", "wacsfset2"]  # neither set lost
    assert compute_hashes(s)["content_hash"] == s.content_hash


def test_overwrite_is_refused_while_the_store_is_held_and_a_killed_holder_frees_it(
    graph_store, tmp_path
):
    store = tmp_path / "s.lmdb"
    shutil.copytree(graph_store, store)
    holder = python(HOLD_LOCK, store)
    try:
        wait_for_holder(store, holder)
        with pytest.raises(StoreBusyError, match=rf"{store} is in use .*PID {holder.pid} "):
            build(store, PEROV_SAMPLE, **PEROV, cutoff=6.0, overwrite=True)
        assert open_store(store).manifest["cutoff"] == 8.0  # old store untouched
        holder.send_signal(signal.SIGKILL)  # the kernel drops a dead holder's lock
        holder.wait(timeout=30)
    finally:
        holder.kill()
    m = build(store, PEROV_SAMPLE, **PEROV, cutoff=6.0, overwrite=True)
    assert m["cutoff"] == 6.0 == open_store(store).manifest["cutoff"]


def test_reader_keeps_reading_correct_records_while_add_commits(tmp_path):
    rows = read_csv(MP_SAMPLE) * 6  # 240 records: a B-tree deep enough for reuse to show
    src = write_csv(tmp_path / "in.csv", list(rows[0]), [list(r.values()) for r in rows])
    out = tmp_path / "s.lmdb"
    build(out, src)
    store = open_store(out)
    reference = [store[i] for i in range(len(store))]  # also opens the long-lived read txn
    # the add commits into its working environment; no file the reader reads is written
    data = out / ".labels-wacsfset2.partial" / "data.mdb"
    graphs_sha = file_sha256(out / "graphs.mdb")
    adder = python(
        "import sys\n"
        "from fingerprint_pretrain.builder.add import add_descriptors\n"
        "add_descriptors(sys.argv[1], ['wacsfset2'], jobs=1, chunk_size=1, progress=False)\n",
        out,
    )
    reads, wrong, errors, first_errors, commits_seen = 0, 0, 0, [], set()
    try:
        while adder.poll() is None:
            if data.exists():
                commits_seen.add(data.stat().st_mtime_ns)
            for i in range(len(store)):
                try:
                    rec = store[i]
                except Exception as err:  # before the fix: "record 86 missing from data.mdb"
                    errors += 1
                    first_errors = first_errors[:2] + [f"{type(err).__name__}: {err}"]
                    continue
                reads += 1
                ref = reference[i]
                fields = ("id", "z", "pos", "cell", "edge_index", "edge_shift", "edge_dist")
                if not all(np.array_equal(rec[k], ref[k]) for k in fields):
                    wrong += 1
        _, stderr = adder.communicate(timeout=300)
    finally:
        adder.kill()
    assert adder.returncode == 0, stderr
    assert len(commits_seen) >= 5, "the reads did not overlap the add's commits"
    assert errors == 0 and wrong == 0, (reads, wrong, errors, first_errors)
    # after the add: the open reader still serves the same records; a fresh one sees the set
    for i in (0, 119, 239):
        np.testing.assert_array_equal(store[i]["pos"], reference[i]["pos"])
    assert open_store(out).manifest["descriptors"].keys() == {"wacsfset2"}
    assert file_sha256(out / "graphs.mdb") == graphs_sha


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc; zombies count as gone)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parent[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_kill_9_of_fp_build_ends_its_worker_processes(tmp_path):
    rows = read_csv(MP_SAMPLE) * 3
    src = write_csv(tmp_path / "in.csv", list(rows[0]), [list(r.values()) for r in rows])
    main = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fingerprint_pretrain.builder.cli",
            "build",
            src,
            "--out",
            tmp_path / "k.lmdb",
        ]
        + ["-d", "wacsfset1", "-j", "2", "--chunk-size", "2", "-q"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: set[int] = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and main.poll() is None:
            workers = _children(main.pid)
            if len(workers) >= 3:  # 2 workers and loky's resource tracker(s)
                break
            time.sleep(0.05)
        assert main.poll() is None and len(workers) >= 3, workers
        time.sleep(0.5)
        workers |= _children(main.pid)
        os.kill(main.pid, signal.SIGKILL)  # the main process only, not its group
        main.wait(timeout=30)
        # Orphaned workers notice within a second or two on an idle machine; at load ~10 on
        # two cores it took 12.5 s, so allow 30 s (a leaked worker would run on much longer).
        deadline = time.time() + 30
        while _alive(workers) and time.time() < deadline:
            time.sleep(0.1)
        left = _alive(workers)
    finally:
        for pid in _alive(workers):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"worker processes outlived the killed fp-build: {sorted(left)}"
