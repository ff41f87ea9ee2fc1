"""The import rules of the layers (see README, Layout)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Who may import which of our packages.
ALLOWED = {
    "core": set(),
    "edge": {"core"},
    "control_plane": {"core"},
    "cli": {"core", "edge", "control_plane"},
    # Build tooling runs before the virtualenv exists: standard library only, nothing of ours.
    "tools": set(),
}
OURS = set(ALLOWED)


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_their_layer_allows(package: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in (ROOT / package).rglob("*.py")
        for line, name in _imports(path)
        if name in OURS and name != package and name not in ALLOWED[package]
    ]
    assert bad == []


def test_core_imports_only_the_standard_library_and_msgpack() -> None:
    allowed = set(sys.stdlib_module_names) | {"msgpack", "core", "__future__"}
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in (ROOT / "core").rglob("*.py")
        for line, name in _imports(path)
        if name not in allowed
    ]
    assert bad == []


@pytest.mark.process
def test_importing_core_loads_no_third_party_module_but_msgpack() -> None:
    # A fresh interpreter: what `import core` drags in, including transitively.
    script = (
        "import sys, json; before = set(sys.modules); import core; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=ROOT)
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    # msgpack's C extension registers Cython's runtime modules as it loads.
    cython = {name for name in loaded if name == "cython_runtime" or name.startswith("_cython_")}
    third_party = loaded - set(sys.stdlib_module_names) - {"core", "msgpack"} - cython
    assert third_party == set()
    assert "msgpack" in loaded


def test_the_layering_check_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "mod.py"
    bad.write_text("from control_plane import app\nimport numpy\n")
    assert [name for _, name in _imports(bad)] == ["control_plane", "numpy"]
