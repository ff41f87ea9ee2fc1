"""Install the Node tooling exactly as package-lock.json pins it, whatever the registry adds or drops.

`npm ci` fails as soon as the registry publishes a platform build the lock does not list (a new
`@cloudflare/workerd-darwin-*` is enough), and plain `npm install` rewrites the lock. So we run
`npm install --no-save`, which reads the lock and never writes it, and then check what landed in
node_modules against the lock ourselves:

- every package installed is in the lock, at the same path, version and integrity hash;
- every package the lock says this platform needs (required dependencies, and optional ones whose
  os/cpu/libc match) is installed at the locked version;
- package-lock.json is byte-for-byte what it was.

Standard library only: it runs before the virtualenv exists.

    python tools/npm_locked_install.py [DIR]
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NPM_INSTALL = ("npm", "install", "--no-save", "--no-audit", "--no-fund", "--loglevel=error")


class LockMismatch(Exception):
    """What is installed is not what the lock pins."""


def node_platform() -> tuple[str, str, str | None]:
    """(os, cpu, libc) in npm's vocabulary: `process.platform`, `process.arch`, detect-libc's family."""
    os_name = {"win32": "win32", "darwin": "darwin"}.get(sys.platform, sys.platform)
    if os_name.startswith("linux"):
        os_name = "linux"
    machine = platform.machine().lower()
    cpu = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "i686": "ia32", "i386": "ia32"}.get(
        machine, machine
    )
    libc: str | None = None
    if os_name == "linux":
        libc = "glibc" if platform.libc_ver()[0] == "glibc" else "musl"
    return os_name, cpu, libc


def _allowed(values: list[str] | None, actual: str | None) -> bool:
    # npm's rule (npm-install-checks): a list of names, each possibly negated with "!".
    if not values or actual is None:
        return True
    if f"!{actual}" in values:
        return False
    positives = [v for v in values if not v.startswith("!")]
    return not positives or actual in positives


def fits_platform(entry: Mapping[str, Any], plat: tuple[str, str, str | None]) -> bool:
    os_name, cpu, libc = plat
    return (
        _allowed(entry.get("os"), os_name)
        and _allowed(entry.get("cpu"), cpu)
        and _allowed(entry.get("libc"), libc if os_name == "linux" else None)
    )


def _resolve(packages: Mapping[str, Any], from_path: str, name: str) -> str | None:
    """Where Node would find `name` from the package at `from_path` (nearest node_modules upward)."""
    base = from_path
    while True:
        candidate = f"{base}/node_modules/{name}" if base else f"node_modules/{name}"
        if candidate in packages:
            return candidate
        if not base:
            return None
        cut = base.rfind("/node_modules/")
        base = base[:cut] if cut >= 0 else ""


def required_paths(lock: Mapping[str, Any], plat: tuple[str, str, str | None]) -> set[str]:
    """Lock paths this platform must have: walk the dependency edges from the root, following an
    optional edge only into a package built for this os/cpu/libc."""
    packages: Mapping[str, Any] = lock["packages"]
    needed: set[str] = set()
    stack = [""]
    while stack:
        path = stack.pop()
        entry = packages[path]
        edges: list[tuple[str, bool]] = [(n, False) for n in entry.get("dependencies", {})]
        edges += [(n, True) for n in entry.get("optionalDependencies", {})]
        peer_meta = entry.get("peerDependenciesMeta", {})
        edges += [
            (n, True) for n in entry.get("peerDependencies", {}) if not peer_meta.get(n, {}).get("optional")
        ]
        for name, optional in edges:
            target = _resolve(packages, path, name)
            if target is None:
                if optional:
                    continue  # an optional build the lock does not carry: not ours to install
                raise LockMismatch(
                    f"{path or 'package.json'} depends on {name}, which the lock does not list"
                )
            if target in needed:
                continue
            if optional and not fits_platform(packages[target], plat):
                continue
            needed.add(target)
            stack.append(target)
    return needed


def check_installed(root: Path, plat: tuple[str, str, str | None] | None = None) -> list[str]:
    """Compare node_modules under `root` with `root/package-lock.json`; return what is wrong."""
    plat = plat or node_platform()
    lock = json.loads((root / "package-lock.json").read_text())
    packages: Mapping[str, Any] = lock["packages"]
    hidden_file = root / "node_modules" / ".package-lock.json"
    if not hidden_file.exists():
        return ["node_modules/.package-lock.json is missing: npm did not finish"]
    installed: Mapping[str, Any] = json.loads(hidden_file.read_text())["packages"]
    problems = []
    for path, entry in installed.items():
        locked = packages.get(path)
        if locked is None:
            problems.append(f"{path}@{entry.get('version')} is installed but not in the lock")
            continue
        for field in ("version", "integrity"):
            if entry.get(field) != locked.get(field):
                problems.append(f"{path}: {field} {entry.get(field)!r}, the lock pins {locked.get(field)!r}")
    for path in sorted(required_paths(lock, plat)):
        manifest = root / path / "package.json"
        want = packages[path].get("version")
        if not manifest.exists():
            problems.append(f"{path}@{want} is locked for this platform but not installed")
            continue
        got = json.loads(manifest.read_text()).get("version")
        if got != want:
            problems.append(f"{path}: installed {got}, the lock pins {want}")
    return problems


def install(root: Path) -> None:
    lock_file = root / "package-lock.json"
    before = lock_file.read_bytes()
    try:
        subprocess.run(NPM_INSTALL, cwd=root, check=True)
    finally:
        if lock_file.read_bytes() != before:
            lock_file.write_bytes(before)
            raise LockMismatch("npm rewrote package-lock.json despite --no-save; restored it")
    problems = check_installed(root)
    if problems:
        raise LockMismatch("node_modules does not match package-lock.json:\n  " + "\n  ".join(problems))


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else os.getcwd()).resolve()
    try:
        install(root)
    except LockMismatch as exc:
        print(f"npm_locked_install: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"npm_locked_install: npm install failed (exit {exc.returncode})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
