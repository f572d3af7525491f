"""Per-feature statistics in one streaming pass, mergeable across workers.

Each worker summarises its chunk (count, mean, sum of squared deviations M2, min, max per
feature); the main process merges summaries with Chan et al.'s pairwise update, which is
numerically stable (no ``Σx² − (Σx)²`` cancellation) and independent of chunking up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FeatureStats"]


@dataclass
class FeatureStats:
    """Running statistics of a (n, d) stream. Arrays are (d,) float64."""

    count: int
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> FeatureStats:
        return cls(
            0,
            np.zeros(dim),
            np.zeros(dim),
            np.full(dim, np.inf),
            np.full(dim, -np.inf),
        )

    @classmethod
    def of(cls, values: np.ndarray) -> FeatureStats:
        """Statistics of a (n, d) block."""
        values = np.asarray(values, dtype=np.float64)
        n, dim = values.shape
        if n == 0:
            return cls.empty(dim)
        with np.errstate(invalid="ignore", over="ignore"):  # inf in, inf/nan out: reported
            mean = values.mean(axis=0)
            m2 = ((values - mean) ** 2).sum(axis=0)
        return cls(
            n,
            mean,
            m2,
            values.min(axis=0),
            values.max(axis=0),
        )

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Statistics of the union of both streams."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        return FeatureStats(
            n,
            self.mean + delta * (other.count / n),
            self.m2 + other.m2 + delta**2 * (self.count * other.count / n),
            np.minimum(self.min, other.min),
            np.maximum(self.max, other.max),
        )

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof = 0)."""
        return np.sqrt(self.m2 / max(self.count, 1))

    def to_dict(self) -> dict:
        """JSON-ready: ``{"count", "mean", "std", "min", "max"}`` (lists of floats)."""
        return {
            "count": int(self.count),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "min": self.min.tolist(),
            "max": self.max.tolist(),
        }
