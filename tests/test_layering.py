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
    # Bundles are built and published by operators; the control-plane server never touches them.
    "deploy": {"core"},
    "cli": {"core", "edge", "control_plane", "deploy"},
    # Build tooling runs before the virtualenv exists: standard library only, nothing of ours.
    "tools": set(),
}
OURS = set(ALLOWED)

# Inside control_plane, floors from the top down (README, "Module map"): a module may import its
# own floor's package and any floor below it, never one above. The ground floor holds the modules
# at the top of control_plane/ and control_plane/distribution/.
FLOORS = {
    "control_plane.main": 5,
    "control_plane.http": 4,
    "control_plane.learning": 3,
    "control_plane.events": 3,
    "control_plane.profiles": 3,
    "control_plane.storage": 2,
    "control_plane.distribution": 1,
    "control_plane": 1,  # experiments, settings, metrics, propensity
}


def _floor(module: str) -> tuple[str, int]:
    """The floor package holding ``module`` (a dotted name under control_plane) and its level."""
    parts = module.split(".")
    for n in (2, 1):
        prefix = ".".join(parts[:n])
        if prefix in FLOORS and (n == 2 or len(parts) <= 2):
            return prefix, FLOORS[prefix]
    return "control_plane", FLOORS["control_plane"]


def _imports(path: Path) -> list[tuple[int, str]]:
    return [(line, name.split(".")[0]) for line, name in _dotted_imports(path)]


def _dotted_imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute import, as the full dotted module name (``from a import b`` gives ``a.b``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


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


def _floor_violations(path: Path, module: str) -> list[str]:
    """The imports of ``path`` (judged as the module ``module``) that point to its floor or above."""
    here, level = _floor(module)
    bad = []
    for line, name in _dotted_imports(path):
        if not name.startswith("control_plane."):
            continue
        there, their_level = _floor(name)
        if there != here and their_level >= level:
            bad.append(f"{module}:{line} ({here}, floor {level}) imports {name} (floor {their_level})")
    return bad


def test_control_plane_floors_import_only_downwards() -> None:
    paths = sorted((ROOT / "control_plane").rglob("*.py"))
    assert [bad for path in paths for bad in _floor_violations(path, _module(path))] == []


def test_every_control_plane_package_has_a_floor() -> None:
    packages = {_module(p.parent) for p in (ROOT / "control_plane").rglob("__init__.py")}
    packages.discard("control_plane.storage.migrations")  # Alembic's scripts, part of storage
    packages.discard("control_plane.http.dashboard")  # the dashboard's rooms, part of http
    assert packages - set(FLOORS) == set()


def test_the_floor_check_catches_an_upward_import(tmp_path: Path) -> None:
    fake = tmp_path / "store.py"
    fake.write_text("from control_plane.learning.learner import learn\nfrom control_plane.storage import X")
    bad = _floor_violations(fake, "control_plane.storage.store")
    assert [v.split(" imports ")[1] for v in bad] == ["control_plane.learning.learner.learn (floor 3)"]


@pytest.mark.process
def test_every_error_class_of_ours_derives_from_perch_error() -> None:
    # One base lets a caller (the edge's fallback, the CLI) catch everything Perch raises, while the
    # builtin second base keeps `except ValueError` working where it did.
    script = """
import importlib, inspect, json, pkgutil
import core
bad = []
for package in ("core", "edge", "control_plane", "deploy", "cli"):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if info.name in ("edge.worker", "edge.entry") or ".migrations" in info.name:
            continue  # Pyodide-only; Alembic scripts
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and issubclass(cls, BaseException):
                if not issubclass(cls, core.PerchError):
                    bad.append(f"{info.name}.{name}")
print(json.dumps(sorted(bad)))
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=ROOT)
    assert json.loads(out.stdout) == []


def _module_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports at module level (``from a import b`` resolved)."""
    paths = {_module(p): p for package in packages for p in sorted((ROOT / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        targets = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:  # top level: what runs on import
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            targets |= {name for name in names if name in paths and name != module}
        graph[module] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle in ``graph`` (as a path that ends where it starts), or []."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_no_module_of_ours_imports_itself_round_a_cycle() -> None:
    assert _cycle(_module_graph(("core", "edge", "control_plane", "deploy", "cli"))) == []


def test_the_cycle_check_finds_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []
