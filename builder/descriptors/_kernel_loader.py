"""Loading and admission of the optional compiled descriptor kernels (EAD, GMP, wACSF).

Each kernel is a C extension ``builder.descriptors._<family>_kernel`` built by ``setup.py`` when
a C compiler is present, with a Python wrapper ``<family>_kernel.py`` that holds the module state
(``_EXTENSION``, ``_REASON``, ``ISA``; tests monkeypatch them) and calls the functions here:

* :func:`load_extension`: the extension, or the reason it is not used: disabled by its
  environment variable (``FP_<FAMILY>_KERNEL=0`` / ``off``), not built, built for another calling
  convention (``ABI``), or a stale build, whose ``SOURCE_HASH`` (sha256 of the C file, compiled in
  by ``setup.py``) differs from the C file beside it in a source tree.
* :func:`open_kernel`: the module state, with the instruction-set variant to use: the widest
  one the CPU runs, or the one the environment variable names.
* :func:`checked_isa`: a caller's variant (default the module's), refused when unsupported.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from types import ModuleType

_OFF = ("0", "off", "false", "no")
_AUTO = ("", "1", "on", "auto", "true", "yes")


def source_hash(path: Path) -> str:
    """sha256 (hex) of a kernel's C source, as ``setup.py`` compiles it into ``SOURCE_HASH``."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_extension(
    module: str, abi: int, source: Path, env_var: str
) -> tuple[ModuleType | None, str | None]:
    """(extension module, None), or (None, why it is not used).

    Args:
        module: the extension's module name in ``builder.descriptors``, e.g. ``"_ead_kernel"``.
        abi: the calling convention the wrapper was written for (the C file's ``*_KERNEL_ABI``).
        source: the C file; a build whose ``SOURCE_HASH`` differs from it is refused (skipped
            when the file is absent, as in a wheel, or the build carries no hash).
        env_var: e.g. ``"FP_EAD_KERNEL"``; ``0`` / ``off`` / ``false`` / ``no`` disables.
    """
    setting = os.environ.get(env_var, "").strip().lower()
    if setting in _OFF:
        return None, f"disabled by {env_var}={setting}"
    try:
        extension = importlib.import_module(f"fingerprint_pretrain.builder.descriptors.{module}")
    except ImportError as error:
        return None, f"the extension is not built ({error}); install with a C compiler present"
    built_abi = getattr(extension, "ABI", None)
    if built_abi != abi:
        return None, (
            f"built for ABI {built_abi}, this wrapper needs {abi}: rebuild (pip install -e .)"
        )
    built_from = getattr(extension, "SOURCE_HASH", "")
    if built_from and source.exists() and built_from != source_hash(source):
        return None, (
            f"stale build: {source.name} changed since it was compiled; rebuild (pip install -e .)"
        )
    return extension, None


def open_kernel(
    extension: ModuleType | None, reason: str | None, env_var: str
) -> tuple[ModuleType | None, str | None, tuple[str, ...], tuple[str, ...], str | None]:
    """A wrapper's module state from :func:`load_extension`'s answer.

    Returns:
        (extension or None, why it is unavailable or None, every variant compiled into it, the
        variants this CPU runs (the widest last), the variant to use). The variant is the widest
        one, or the one ``env_var`` names; naming one this CPU cannot run makes the kernel
        unavailable, with that reason.
    """
    if extension is None:
        return None, reason, (), (), None
    all_isas, supported = tuple(extension.ALL_ISAS), tuple(extension.isas())
    wanted = os.environ.get(env_var, "").strip().lower()
    if wanted in _AUTO:
        return extension, None, all_isas, supported, supported[-1]
    if wanted not in supported:
        return None, f"{env_var}={wanted}: not one of {supported}", all_isas, supported, None
    return extension, None, all_isas, supported, wanted


def checked_isa(isa: str | None, default: str | None, supported: tuple[str, ...]) -> str:
    """``isa`` (``default`` when None); ValueError when this CPU or build cannot run it."""
    variant = default if isa is None else isa
    if variant not in supported:
        raise ValueError(f"instruction set {variant!r} not supported here ({supported})")
    return variant
