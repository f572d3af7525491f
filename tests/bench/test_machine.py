"""bench/machine.py: the CPU is named from lscpu, else /proc/cpuinfo, with its widest SIMD set."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def machine():
    spec = importlib.util.spec_from_file_location("machine", REPO / "bench" / "machine.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["machine"] = module
    spec.loader.exec_module(module)
    return module


def test_lscpu_fields_name_the_cpu(machine, monkeypatch):
    monkeypatch.setattr(
        machine, "_lscpu", lambda: {"Model name": "AMD EPYC", "Flags": "fpu avx avx2 fma"}
    )
    assert machine.cpu_label() == "AMD EPYC (AVX2)"


def test_avx512_wins_over_avx2(machine, monkeypatch):
    flags = "sse avx2 avx512f avx512bw"
    monkeypatch.setattr(
        machine, "_lscpu", lambda: {"Model name": "Intel(R) Xeon(R)", "Flags": flags}
    )
    assert machine.cpu_isa() == "AVX-512F"


def test_cpuinfo_is_the_fallback(machine, monkeypatch):
    monkeypatch.setattr(machine, "_lscpu", dict)
    monkeypatch.setattr(machine, "_cpuinfo", lambda: {"model name": "Some CPU", "flags": "sse2"})
    assert machine.cpu_label() == "Some CPU (no AVX2)"


def test_this_machine_has_a_name(machine):
    assert machine.cpu_name().strip()
