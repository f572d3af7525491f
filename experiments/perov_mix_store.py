"""Build the pre-training store of the perovskite follow-up (experiments/perov_mix.yaml).

Question: does fine-tuning on the Castelli perovskites go wrong (negative transfer at 1,000
training structures, `docs/results.md`) because the pre-training set holds no perovskites?
This store is the 2,485 MP structures of ``mp20_subset`` plus 2,485 perovskites drawn at random
(numpy seed 0) from ``perov_5.csv.gz``, with EAD, GMP and wACSF set 1 labels. The perovskites are
also in the fine-tuning store, as the MP stand-ins' structures are: pre-training sees their
descriptor labels, never the heat of formation. (The first runs used a store built with EAD
only and had GMP and wACSF added by ``fp-build add``; this script's store has the same content
hash.)

Usage: python experiments/perov_mix_store.py [--data ../shared/datasets] [--out STORE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from builder.cli import main as fp_build
from builder.datasets.download import data_home

LABELS = ("eadset1", "gmpset1", "wacsfset1")


def main() -> None:
    stores = data_home() / "stores"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets", help="folder of the CSV files")
    parser.add_argument("--out", default=str(stores / "mp20_perov5mix.lmdb"))
    args = parser.parse_args()
    mp = pd.read_csv(Path(args.data) / "mp_20_subset.csv.gz")
    perov = pd.read_csv(Path(args.data) / "perov_5.csv.gz")
    pick = perov.iloc[np.sort(np.random.default_rng(0).choice(len(perov), len(mp), replace=False))]
    mixed = pd.concat(
        [
            mp[["material_id", "cif"]],
            pd.DataFrame(
                {"material_id": "castelli-" + pick["castelli_id"].astype(str), "cif": pick["cif"]}
            ),
        ]
    )
    csv = Path(args.out).with_suffix(".csv.gz")
    csv.parent.mkdir(parents=True, exist_ok=True)
    mixed.to_csv(csv, index=False)
    print(f"{len(mp)} MP + {len(pick)} perovskites -> {csv}")
    argv = ["build", str(csv), "-o", args.out]
    argv += [arg for label in LABELS for arg in ("-d", label)]
    print("fp-build " + " ".join(argv))
    if rc := fp_build(argv):
        sys.exit(rc)


if __name__ == "__main__":
    main()
