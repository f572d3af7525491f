"""Train/validation/test splits over a store's records, shared by ``builder`` and ``trainer``.

Pure NumPy (no torch), so the builder can write split files next to the stores it makes
(``fp-build fetch``) and the trainer computes the very same splits from a seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MATBENCH_SEED", "PAPER_SEEDS", "kfold_splits", "random_split"]

#: The paper's fine-tuning seeds (one random 0.6/0.2/0.2 split per seed).
PAPER_SEEDS = (111, 222, 333, 444, 555)
#: MatBench v0.1's ``KFold(n_splits=5, shuffle=True, random_state=18012019)``.
MATBENCH_SEED = 18012019


def random_split(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Shuffle 0 … n−1 with ``seed`` and cut it by ``fractions`` (summing to 1; the last part
    takes the rounding remainder). The paper: 0.8/0.05/0.15 (pre-training), 0.6/0.2/0.2."""
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions {list(fractions)} do not sum to 1")
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.floor(np.cumsum(fractions)[:-1] * n).astype(int)
    return [np.sort(part) for part in np.split(perm, cuts)]


def kfold_splits(
    n: int, folds: int = 5, seed: int = MATBENCH_SEED
) -> list[tuple[np.ndarray, np.ndarray]]:
    """MatBench's protocol: ``KFold(n_splits=5, shuffle=True, random_state=18012019)``.

    Reproduces scikit-learn's KFold (a legacy ``RandomState(seed)`` shuffle of 0 … n−1, then
    contiguous folds, the first ``n % folds`` one element larger) without importing it.
    Returns ``[(train, test), ...]`` index arrays, sorted.
    """
    perm = np.arange(n)
    np.random.RandomState(seed).shuffle(perm)
    sizes = np.full(folds, n // folds)
    sizes[: n % folds] += 1
    out, start = [], 0
    for size in sizes:
        test = perm[start : start + size]
        train = np.concatenate([perm[:start], perm[start + size :]])
        out.append((np.sort(train), np.sort(test)))
        start += size
    return out
