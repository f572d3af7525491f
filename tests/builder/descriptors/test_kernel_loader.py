"""The shared loader of the compiled kernels, on fake extension modules (no C compiler needed)."""

from __future__ import annotations

import hashlib
import sys
import types

import pytest
from fingerprint_pretrain.builder.descriptors import _kernel_loader as loader

NAME = "_fake_kernel"
ENV = "FP_FAKE_KERNEL"


def fake_extension(monkeypatch, abi=2, source_hash="", isas=("generic", "avx2")):
    module = types.ModuleType(NAME)
    module.ABI = abi
    module.SOURCE_HASH = source_hash
    module.ALL_ISAS = ("generic", "avx2", "avx512")
    module.isas = lambda: isas
    monkeypatch.setitem(sys.modules, f"fingerprint_pretrain.builder.descriptors.{NAME}", module)
    return module


def test_load_extension_admits_a_matching_build(monkeypatch, tmp_path):
    source = tmp_path / "_fake_kernel.c"
    source.write_bytes(b"int x;\n")
    digest = hashlib.sha256(b"int x;\n").hexdigest()
    module = fake_extension(monkeypatch, source_hash=digest)
    monkeypatch.delenv(ENV, raising=False)
    assert loader.source_hash(source) == digest
    assert loader.load_extension(NAME, 2, source, ENV) == (module, None)
    # no source beside it (a wheel) or no hash compiled in: nothing to compare, admitted
    assert loader.load_extension(NAME, 2, tmp_path / "absent.c", ENV) == (module, None)
    fake_extension(monkeypatch, source_hash="")
    assert loader.load_extension(NAME, 2, source, ENV)[1] is None


@pytest.mark.parametrize(
    "setting, abi, source_hash, reason",
    [
        ("off", 2, "", "disabled by FP_FAKE_KERNEL=off"),
        ("0", 2, "", "disabled by FP_FAKE_KERNEL=0"),
        ("", 1, "", "built for ABI 1, this wrapper needs 2"),
        ("", 2, "0" * 64, "stale build: _fake_kernel.c changed since it was compiled"),
    ],
)
def test_load_extension_refusals(monkeypatch, tmp_path, setting, abi, source_hash, reason):
    source = tmp_path / "_fake_kernel.c"
    source.write_bytes(b"int x;\n")
    fake_extension(monkeypatch, abi=abi, source_hash=source_hash)
    monkeypatch.setenv(ENV, setting)
    extension, why = loader.load_extension(NAME, 2, source, ENV)
    assert extension is None and why.startswith(reason)


def test_load_extension_not_built(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    extension, why = loader.load_extension("_no_such_kernel", 2, tmp_path / "x.c", ENV)
    assert extension is None and why.startswith("the extension is not built")


@pytest.mark.parametrize(
    "setting, isa", [("", "avx2"), ("auto", "avx2"), ("ON", "avx2"), ("generic", "generic")]
)
def test_open_kernel_picks_the_widest_or_the_named_variant(monkeypatch, setting, isa):
    module = fake_extension(monkeypatch)
    monkeypatch.setenv(ENV, setting)
    state = loader.open_kernel(module, None, ENV)
    assert state == (module, None, ("generic", "avx2", "avx512"), ("generic", "avx2"), isa)


def test_open_kernel_refuses_a_variant_this_cpu_cannot_run(monkeypatch):
    module = fake_extension(monkeypatch)
    monkeypatch.setenv(ENV, "avx512")
    extension, why, _, supported, isa = loader.open_kernel(module, None, ENV)
    assert extension is None and isa is None and supported == ("generic", "avx2")
    assert why == "FP_FAKE_KERNEL=avx512: not one of ('generic', 'avx2')"


def test_open_kernel_keeps_the_load_reason():
    assert loader.open_kernel(None, "not built", ENV) == (None, "not built", (), (), None)


def test_checked_isa():
    assert loader.checked_isa(None, "avx2", ("generic", "avx2")) == "avx2"
    assert loader.checked_isa("generic", "avx2", ("generic", "avx2")) == "generic"
    with pytest.raises(ValueError, match="instruction set 'avx512' not supported here"):
        loader.checked_isa("avx512", "avx2", ("generic", "avx2"))
