"""What the coverage follow-ups' store scripts share (``perov_mix_store.py``,
``c2db_mix_store.py``): their command line and the ``fp-build build`` call."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fingerprint_pretrain.builder.cli import main as fp_build
from fingerprint_pretrain.builder.datasets.download import data_home


def parse_args(doc: str, store_name: str) -> argparse.Namespace:
    """``--data`` (folder of ../shared/datasets' raw files) and ``--out`` (the store, by default
    ``<data home>/stores/<store_name>``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets", help="folder of the raw files")
    parser.add_argument("--out", default=str(data_home() / "stores" / store_name))
    return parser.parse_args()


def build(inputs: Sequence[str | Path], out: str, labels: Sequence[str]) -> None:
    """``fp-build build INPUTS -o OUT -d LABEL ...``, printed first; exits on failure."""
    argv = ["build", *map(str, inputs), "-o", out]
    argv += [arg for label in labels for arg in ("-d", label)]
    print("fp-build " + " ".join(argv))
    if rc := fp_build(argv):
        sys.exit(rc)
