"""The project installs under one import namespace, ``fingerprint_pretrain``.

PyPI has unrelated packages called ``builder``, ``trainer`` (Coqui's, widely installed) and
``schemas``: installing this project must not put those top-level names on ``sys.path``, and
no module of ours may import the repository folders by their bare names (from the repository
root they would load a second copy of every module, with its own exception classes).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BARE = re.compile(r"(builder|trainer|schemas)(\.|$)")


def _sources() -> list[Path]:
    out = []
    for folder in (
        "builder",
        "trainer",
        "schemas",
        "fingerprint_pretrain",
        "tests",
        "bench",
        "experiments",
    ):
        out += [p for p in (ROOT / folder).rglob("*.py") if "runs" not in p.parts]
    return out + [ROOT / "setup.py"]


def bare_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of each import statement of ``path`` that names a folder bare (code
    only: a script held in a string, such as an old revision's, is not an import of ours)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        out += [(node.lineno, name) for name in names if BARE.match(name)]
    return out


def test_no_module_imports_a_bare_folder_name(tmp_path: Path) -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in _sources()
        for line, name in bare_imports(path)
    ]
    assert found == []
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import os\nimport builderx\nfrom trainer.cli import x\nS = 'import schemas'\n"
        "def f():\n    import schemas\n"
    )
    assert bare_imports(planted) == [(3, "trainer.cli"), (6, "schemas")]


def test_installed_distribution_has_one_top_level_name() -> None:
    dist = metadata.distribution("fingerprint-pretrain")
    assert (dist.read_text("top_level.txt") or "").split() == ["fingerprint_pretrain"]


@pytest.mark.slow
def test_wheel_holds_only_the_namespace(tmp_path: Path) -> None:
    """The wheel a user installs: every file under ``fingerprint_pretrain/`` (or its
    metadata), every module of the three folders in it, and the bundled data and zoo."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "fingerprint_pretrain",
        f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info",
    }
    for folder in ("builder", "trainer", "schemas"):
        for module in (ROOT / folder).rglob("*.py"):
            assert f"fingerprint_pretrain/{module.relative_to(ROOT).as_posix()}" in names
    assert "fingerprint_pretrain/trainer/pretrained/zoo.json" in names
    assert any(n.startswith("fingerprint_pretrain/builder/data/") for n in names)


def test_bare_names_are_not_importable_outside_the_repository(tmp_path: Path) -> None:
    """From another directory the bare names are not ours: each is absent, or (another
    package's) found outside this repository."""
    code = (
        "import importlib.util, json, fingerprint_pretrain.builder as b, "
        "fingerprint_pretrain.trainer as t, fingerprint_pretrain.schemas as s\n"
        "out = {n: (lambda sp: sp and sp.origin)(importlib.util.find_spec(n)) "
        "for n in ('builder', 'trainer', 'schemas')}\n"
        "out['ours'] = [b.__file__, t.__file__, s.__file__]\n"
        "print(json.dumps(out))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    import json

    found = json.loads(done.stdout)
    for name in ("builder", "trainer", "schemas"):
        origin = found[name]
        assert origin is None or not Path(origin).resolve().is_relative_to(ROOT), (name, origin)
    for path in found["ours"]:
        assert Path(path).resolve().is_relative_to(ROOT)
