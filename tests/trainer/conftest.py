"""Fixtures shared by the trainer tests: one tiny real store, tiny model settings, one torch
thread, and killing a training process once it has saved an epoch."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from fingerprint_pretrain.trainer.checkpoint import load_checkpoint

from tests.builder.helpers import MP_SAMPLE, build

# A model small enough that a few epochs on 40 structures take seconds (TrainConfig keys).
TINY = dict(
    hidden_channels=16,
    num_layers=1,
    num_rbf=8,
    num_heads=2,
    head_channels=16,
    num_workers=0,
    progress=False,
)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """The 40 MP structures of examples/mp_20_sample.csv: target ``band_gap`` (eV) and label
    set ``wacsfset1``. Shared by every test file that only reads it: a test that changes a
    store works on its own copy (:func:`copy_store`)."""
    out = tmp_path_factory.mktemp("tiny-store") / "mp.lmdb"
    build(
        out,
        MP_SAMPLE,
        targets=["band_gap"],
        target_units={"band_gap": "eV"},
        descriptors=["wacsfset1"],
    )
    return out


def copy_store(store: Path, folder: Path) -> Path:
    """A private copy of ``store`` in ``folder`` (same content, same hashes)."""
    here = folder / store.name
    shutil.copytree(store, here)
    return here


@pytest.fixture
def one_thread():
    """Small graphs: one thread (on a shared machine, waking a second costs more than it
    saves)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kill_when(proc, path: Path, epoch: int) -> None:
    """kill -9 ``proc``'s process group once checkpoint ``path`` holds epoch >= ``epoch``
    (``proc`` started with ``start_new_session=True``); fails if it finished first."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if path.exists():
            try:
                if load_checkpoint(path)["epoch"] >= epoch:
                    break
            except Exception:  # being written: try again
                pass
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
