"""The trainer's error class (its own module so every trainer module can raise it)."""

from __future__ import annotations

__all__ = ["TrainingError"]


class TrainingError(RuntimeError):
    """A run that cannot continue (non-finite loss, incompatible store or checkpoint)."""
