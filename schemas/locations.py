"""Where stores live by default: the one definition both the builder (downloads, stores) and
the trainer (``${FP_DATA}`` in sweep plans) use."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_home"]


def data_home() -> Path:
    """Root of downloads, prepared inputs and stores: ``$FP_DATA``, else
    ``$XDG_CACHE_HOME/fingerprint-pretrain``, else ``~/.cache/fingerprint-pretrain``."""
    if os.environ.get("FP_DATA"):
        return Path(os.environ["FP_DATA"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fingerprint-pretrain"
