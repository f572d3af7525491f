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

from pathlib import Path

import numpy as np
import pandas as pd
from mix_store import build, parse_args

LABELS = ("eadset1", "gmpset1", "wacsfset1")


def main() -> None:
    args = parse_args(__doc__, "mp20_perov5mix.lmdb")
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
    build([csv], args.out, LABELS)


if __name__ == "__main__":
    main()
