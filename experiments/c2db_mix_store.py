"""Build the pre-training store of the c2db coverage follow-up (experiments/c2db_mix.yaml).

The perovskite follow-up (``docs/results_perov_mix.md``) found that pre-training helps on a
structure type only when the pre-training set holds that type. Does the same hold for the C2DB
monolayers (2D, with vacuum), where MP-only GMP pre-training gave −5.5 % at 1,000 training
structures and −4 % (n.s.) at 250? This store is the 2,485 MP structures of ``mp20_subset`` plus
2,485 C2DB structures drawn at random (numpy seed 0) from ``mdl_c2db_workfunction.json.gz``,
with GMP set 1 labels. The C2DB structures are also in the fine-tuning store (about two thirds
of them): pre-training sees their descriptor labels, never the work function.

Usage: python experiments/c2db_mix_store.py [--data ../shared/datasets] [--out STORE]
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
from mix_store import build, parse_args

LABELS = ("gmpset1",)
COUNT = 2485  # as many as mp20_subset holds


def main() -> None:
    args = parse_args(__doc__, "mp20_c2dbmix.lmdb")
    with gzip.open(Path(args.data) / "mdl_c2db_workfunction.json.gz", "rt") as fh:
        c2db = json.load(fh)
    pick = np.sort(np.random.default_rng(0).choice(len(c2db), COUNT, replace=False))
    # MatDeepLearn layout without the target (pre-training never sees it); ids prefixed so
    # they cannot collide with MP ids
    subset = [
        {
            "structure_id": f"c2db-{c2db[i]['structure_id']}",
            **{k: c2db[i][k] for k in ("positions", "cell", "atomic_numbers")},
        }
        for i in pick
    ]
    part = Path(args.out).with_suffix(".c2db.json")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_text(json.dumps(subset))
    print(f"{COUNT} of {len(c2db)} C2DB structures -> {part}")
    build([Path(args.data) / "mp_20_subset.csv.gz", part], args.out, LABELS)


if __name__ == "__main__":
    main()
