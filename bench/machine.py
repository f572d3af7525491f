"""The machine a benchmark ran on, named the same way in every ``bench/results/`` file.

Benchmarks import this from their own folder (``from machine import cpu_name``); the figures
they report are only comparable when the CPU is named with them (Intel Xeon with AVX-512 and
AMD EPYC with AVX2 both occur here and give different ratios).
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def _lscpu() -> dict[str, str]:
    """``lscpu``'s fields (``{"Model name": "AMD EPYC", ...}``); empty when it cannot run."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {
        k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in text.splitlines() if ":" in ln)
    }


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo``; empty where there is none."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            if ":" in line:
                key, value = line.split(":", 1)
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_name() -> str:
    """The CPU's model name (``lscpu``'s "Model name", else ``/proc/cpuinfo``), e.g. "AMD EPYC"."""
    name = _lscpu().get("Model name") or _cpuinfo().get("model name")
    return name or platform.processor() or "unknown"


def cpu_isa() -> str:
    """The widest x86 SIMD extension the CPU reports: "AVX-512F", "AVX2" or "no AVX2"."""
    flags = (_lscpu().get("Flags") or _cpuinfo().get("flags") or "").split()
    return "AVX-512F" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"


def cpu_label() -> str:
    """Model name and widest SIMD extension, e.g. "AMD EPYC (AVX2)"."""
    return f"{cpu_name()} ({cpu_isa()})"
