"""Build of the optional compiled EAD, GMP and wACSF kernels; all else is in pyproject.toml.

``builder.descriptors._ead_kernel`` (``builder/descriptors/_ead_kernel.c``, plain C99 + the
CPython API) is an *optional* extension: when no C compiler or no Python headers are available
the build warns and installation goes on, and :mod:`builder.descriptors.ead` falls back to its
NumPy path. Flags are portable (no ``-march``): the C file compiles its hot loops for SSE2, AVX2
and AVX-512 itself and picks one at run time. The sha256 of the source is compiled in, so that
:mod:`builder.descriptors.ead_kernel` can refuse a build older than the source (an editable
install does not rebuild extensions by itself: rerun ``pip install -e .``).
``builder.descriptors._gmp_kernel`` (``_gmp_kernel.c``) is optional in the same way; without it
:mod:`builder.descriptors.gmp` uses its NumPy path, and ``gmp_kernel.py`` refuses a stale build.
So is ``builder.descriptors._wacsf_kernel`` (``_wacsf_kernel.c``): without it
:mod:`builder.descriptors.wacsf` uses its NumPy paths; ``wacsf_kernel.py`` refuses a stale build.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

SOURCE = "builder/descriptors/_ead_kernel.c"
GMP_SOURCE = "builder/descriptors/_gmp_kernel.c"
WACSF_SOURCE = "builder/descriptors/_wacsf_kernel.c"
# -O3: auto-vectorisation; -ffp-contract=fast: a*b+c as one FMA where the CPU has it (also in
# ISO C mode, where GCC's default is off); no -march/-mavx*: the binary runs on any x86-64.
UNIX_FLAGS = ["-O3", "-ffp-contract=fast"]
MSVC_FLAGS = ["/O2"]


class BuildExt(build_ext):
    """Compiler-specific flags (GCC/Clang or MSVC)."""

    def build_extensions(self) -> None:
        flags = MSVC_FLAGS if self.compiler.compiler_type == "msvc" else UNIX_FLAGS
        for extension in self.extensions:
            extension.extra_compile_args = [*extension.extra_compile_args, *flags]
        super().build_extensions()


#: the repository's top-level folders, installed under the one namespace ``fingerprint_pretrain``
FOLDERS = ("builder", "trainer", "schemas")


def packages() -> tuple[list[str], dict[str, str]]:
    """Every installed package name and the folder of each folder-mapped one."""
    names = ["fingerprint_pretrain"]
    dirs: dict[str, str] = {}
    for folder in FOLDERS:
        for sub in ["", *(f".{p}" for p in find_packages(folder))]:
            names.append(f"fingerprint_pretrain.{folder}{sub}")
            dirs[f"fingerprint_pretrain.{folder}{sub}"] = folder + sub.replace(".", "/")
    return names, dirs


def source_hash(source: str = SOURCE) -> str:
    return hashlib.sha256((Path(__file__).parent / source).read_bytes()).hexdigest()


PACKAGES, PACKAGE_DIR = packages()

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    ext_modules=[
        Extension(
            "fingerprint_pretrain.builder.descriptors._ead_kernel",
            sources=[SOURCE],
            define_macros=[("EAD_SOURCE_HASH", f'"{source_hash()}"')],
            optional=True,
        ),
        Extension(
            "fingerprint_pretrain.builder.descriptors._gmp_kernel",
            sources=[GMP_SOURCE],
            define_macros=[("GMP_SOURCE_HASH", f'"{source_hash(GMP_SOURCE)}"')],
            optional=True,
        ),
        Extension(
            "fingerprint_pretrain.builder.descriptors._wacsf_kernel",
            sources=[WACSF_SOURCE],
            define_macros=[("WACSF_SOURCE_HASH", f'"{source_hash(WACSF_SOURCE)}"')],
            optional=True,
        ),
    ],
    cmdclass={"build_ext": BuildExt},
)
