"""The Node tooling installs from the lock whatever platform builds the registry adds or drops.

The unit tests check the lock walk and the comparison on synthetic trees. The `node` tests run the
real install step on the committed lock in a temp dir, after removing its non-Linux optional entries
(the lock as it was before the registry published workerd's darwin/windows builds: `npm ci` failed
on it) and after adding a platform build that does not exist. They skip only where the npm registry
is unreachable, and fail in CI (CI=true).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tools.npm_locked_install import (
    LockMismatch,
    check_installed,
    fits_platform,
    node_platform,
    required_paths,
)

ROOT = Path(__file__).resolve().parent.parent.parent
LOCK = json.loads((ROOT / "package-lock.json").read_text())
LINUX_X64 = ("linux", "x64", "glibc")
TOP_LEVEL = ("pyodide", "wrangler", "workerd")


def test_the_committed_lock_is_complete_and_pins_the_top_level_tools() -> None:
    packages = LOCK["packages"]
    wanted = json.loads((ROOT / "package.json").read_text())["dependencies"]
    for name, version in wanted.items():
        assert packages[f"node_modules/{name}"]["version"] == version
    # Every optional build workerd names is in the lock, as npm writes it: nothing for npm to add.
    for name in packages["node_modules/workerd"]["optionalDependencies"]:
        assert f"node_modules/{name}" in packages, name
    assert all("integrity" in entry for path, entry in packages.items() if path), "an entry lacks integrity"


def test_platform_rules_follow_npm() -> None:
    assert fits_platform({"os": ["linux"], "cpu": ["x64"]}, LINUX_X64)
    assert not fits_platform({"os": ["darwin"]}, LINUX_X64)
    assert not fits_platform({"os": ["linux"], "cpu": ["arm64"]}, LINUX_X64)
    assert not fits_platform({"os": ["linux"], "libc": ["musl"]}, LINUX_X64)
    assert not fits_platform({"os": ["!linux"]}, LINUX_X64)
    assert fits_platform({"os": ["!win32"]}, LINUX_X64)
    assert fits_platform({}, LINUX_X64)
    # libc only means something on Linux.
    assert fits_platform({"libc": ["glibc"]}, ("darwin", "arm64", None))


def test_linux_needs_its_own_builds_and_nothing_else() -> None:
    x64 = required_paths(LOCK, LINUX_X64)
    for name in TOP_LEVEL:
        assert f"node_modules/{name}" in x64
    assert "node_modules/@cloudflare/workerd-linux-64" in x64
    assert "node_modules/@esbuild/linux-x64" in x64
    assert not any("darwin" in p or "win32" in p or "windows" in p or "musl" in p for p in x64), x64
    # Optional packages reached only through a build we skip (sharp's wasm32 → @emnapi) are skipped.
    assert "node_modules/@emnapi/runtime" not in x64

    arm = required_paths(LOCK, ("linux", "arm64", "glibc"))
    assert "node_modules/@cloudflare/workerd-linux-arm64" in arm
    assert "node_modules/@cloudflare/workerd-linux-64" not in arm


def test_a_missing_required_dependency_is_an_error() -> None:
    lock = copy.deepcopy(LOCK)
    del lock["packages"]["node_modules/pyodide"]
    with pytest.raises(LockMismatch, match="pyodide"):
        required_paths(lock, LINUX_X64)


def _fake_install(root: Path, lock: dict[str, Any], paths: set[str]) -> None:
    (root / "package-lock.json").write_text(json.dumps(lock))
    hidden = {"packages": {p: lock["packages"][p] for p in paths}}
    (root / "node_modules").mkdir(parents=True)
    (root / "node_modules" / ".package-lock.json").write_text(json.dumps(hidden))
    for path in paths:
        (root / path).mkdir(parents=True, exist_ok=True)
        (root / path / "package.json").write_text(json.dumps({"version": lock["packages"][path]["version"]}))


def test_check_accepts_exactly_the_locked_tree(tmp_path: Path) -> None:
    _fake_install(tmp_path, LOCK, required_paths(LOCK, LINUX_X64))
    assert check_installed(tmp_path, LINUX_X64) == []


def test_check_reports_drift(tmp_path: Path) -> None:
    _fake_install(tmp_path, LOCK, required_paths(LOCK, LINUX_X64))
    manifest = tmp_path / "node_modules" / "wrangler" / "package.json"
    manifest.write_text(json.dumps({"version": "4.999.0"}))
    shutil.rmtree(tmp_path / "node_modules" / "pyodide")
    hidden_file = tmp_path / "node_modules" / ".package-lock.json"
    hidden = json.loads(hidden_file.read_text())
    hidden["packages"]["node_modules/workerd"] = {
        **hidden["packages"]["node_modules/workerd"],
        "integrity": "x",
    }
    hidden["packages"]["node_modules/left-pad"] = {"version": "1.3.0"}
    hidden_file.write_text(json.dumps(hidden))
    problems = "\n".join(check_installed(tmp_path, LINUX_X64))
    assert "node_modules/wrangler: installed 4.999.0" in problems
    assert "node_modules/pyodide@314.0.7 is locked for this platform but not installed" in problems
    assert "node_modules/workerd: integrity 'x'" in problems
    assert "node_modules/left-pad@1.3.0 is installed but not in the lock" in problems


# --- the real install step, on drifted locks -------------------------------------------------------


def _npm_or_skip() -> None:
    """npm and its registry, or a skip on a developer's machine and a failure in CI."""
    message = None
    if shutil.which("npm") is None:
        message = "npm is not installed"
    else:
        probe = subprocess.run(
            ["npm", "view", "pyodide@314.0.7", "version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if probe.returncode != 0:
            message = f"the npm registry is unreachable: {probe.stderr.strip()[:300]}"
    if message:
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _without_foreign_builds(lock: dict[str, Any]) -> dict[str, Any]:
    """The lock as it was before the registry published workerd's non-Linux builds."""
    lock = copy.deepcopy(lock)
    for path in [p for p, e in lock["packages"].items() if p.startswith("node_modules/@cloudflare/workerd-")]:
        if "linux" not in (lock["packages"][path].get("os") or []):
            del lock["packages"][path]
    return lock


def _with_fake_build(lock: dict[str, Any]) -> dict[str, Any]:
    """A platform build the lock names but the registry does not have (one withdrawn tomorrow)."""
    lock = copy.deepcopy(lock)
    version = lock["packages"]["node_modules/workerd"]["version"]
    name = "@cloudflare/workerd-plan9-64"
    lock["packages"]["node_modules/workerd"]["optionalDependencies"][name] = version
    lock["packages"][f"node_modules/{name}"] = {
        "version": version,
        "integrity": "sha512-" + "A" * 86 + "==",
        "optional": True,
        "os": ["plan9"],
        "cpu": ["x64"],
    }
    return lock


@pytest.mark.node
@pytest.mark.parametrize("drift", [_without_foreign_builds, _with_fake_build], ids=["dropped", "added"])
def test_install_step_survives_registry_drift(tmp_path: Path, drift: Any) -> None:
    _npm_or_skip()
    shutil.copy(ROOT / "package.json", tmp_path / "package.json")
    lock = drift(LOCK)
    lock_text = json.dumps(lock, indent=2) + "\n"
    (tmp_path / "package-lock.json").write_text(lock_text)

    # Exactly the Makefile's install step (see the test below), on the drifted lock.
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "npm_locked_install.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    assert (tmp_path / "package-lock.json").read_text() == lock_text, "the install step rewrote the lock"
    assert check_installed(tmp_path) == []
    plat = node_platform()
    for path in required_paths(lock, plat):
        got = json.loads((tmp_path / path / "package.json").read_text())["version"]
        assert got == lock["packages"][path]["version"], path
    for name in TOP_LEVEL:
        assert f"node_modules/{name}" in required_paths(lock, plat)


@pytest.mark.process
def test_make_installs_node_tooling_through_the_locked_installer() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(
        ["make", "-n", "-B", "node"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "tools/npm_locked_install.py" in dry, dry
    assert "npm ci" not in dry and "npm install" not in dry, dry
