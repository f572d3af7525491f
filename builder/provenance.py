"""Provenance recorded in manifests (never part of the content hash)."""

from __future__ import annotations


def environment() -> dict:
    """Versions that can change computed values (neighbour-list tie order, label rounding):
    recorded for provenance; they do not enter the content hash."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.machine()}
    for package in ("numpy", "pymatgen", "lmdb"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    try:
        from fingerprint_pretrain.builder.descriptors import ead_kernel

        out["ead_kernel"] = ead_kernel.ISA if ead_kernel.available() else None
    except (ImportError, AttributeError):
        out["ead_kernel"] = None
    return out
