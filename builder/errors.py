"""The builder's error type: a build, add or export that cannot proceed (one line for the
command line; ``fp-build`` prints it and exits 1)."""

from __future__ import annotations

__all__ = ["BuildError"]


class BuildError(RuntimeError):
    """A build that cannot proceed; the message says why and what to do."""
