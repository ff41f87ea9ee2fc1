"""Versioned edge bundles: ``perch bundle build``.

A bundle is a self-contained wrangler project under ``bundles/<version>/``::

    wrangler.toml        the repository's, verbatim (its ``main`` is src/entry.py)
    src/entry.py         the Worker entry (edge/entry.py)
    src/core/, src/edge/ the decision core and the Worker, minus CPython-only modules
    python_modules/      workers-runtime-sdk and msgpack for Pyodide, pinned by hash
    manifest.json        version, commit, schema, sha256 and size of every file

Deploy it with ``npx wrangler deploy -c bundles/<version>/wrangler.toml``.  The
same sources give the same file hashes; a bundle over the Workers size limit
(compressed, as Cloudflare counts it) is refused.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import SCHEMA_VERSION, PerchError
from deploy.version import version_problem

__all__ = ["BundleError", "build_bundle", "fetch_worker_wheels"]

ROOT = Path(__file__).resolve().parent.parent
# Workers' script size limits, after compression: 3 MiB free, 10 MiB paid.
DEFAULT_MAX_GZIP_BYTES = 10 * 1024 * 1024
PYODIDE_PLATFORM = [
    "--platform",
    "pyemscripten_2026_0_wasm32",
    "--python-version",
    "3.14",
    "--implementation",
    "cp",
    "--abi",
    "cp314",
]
# Modules that only make sense on CPython (they need httpx/uvicorn).
CPYTHON_ONLY = {"edge/local.py"}


class BundleError(PerchError):
    """The bundle cannot be built; the message says why."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def default_version() -> str:
    from importlib.metadata import version

    commit = _git("rev-parse", "--short=10", "HEAD") or "nogit"
    dirty = "-dirty" if _git("status", "--porcelain", "--", "core", "edge", "wrangler.toml") else ""
    return f"{version('perch')}-{commit}{dirty}"


def fetch_worker_wheels(cache: Path) -> list[Path]:
    """The hash-pinned wheels of edge/worker-requirements.txt, downloaded once into ``cache``."""
    requirements = ROOT / "edge" / "worker-requirements.txt"
    cache.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        *PYODIDE_PLATFORM,
        "-r",
        str(requirements),
        "-d",
        str(cache),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BundleError(f"downloading the Worker's wheels failed:\n{result.stderr.strip()}")
    names = [
        line.split("==")[0].replace("-", "_").lower()
        for line in requirements.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    wheels = sorted(p for p in cache.glob("*.whl") if p.name.split("-")[0].lower() in names)
    if len(wheels) != len(names):
        raise BundleError(f"expected wheels for {names} in {cache}, found {[w.name for w in wheels]}")
    return wheels


def _copy_sources(dest: Path) -> None:
    for package in ("core", "edge"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in CPYTHON_ONLY or "__pycache__" in rel or rel == "edge/entry.py":
                continue
            target = dest / "src" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (dest / "src" / "entry.py").write_bytes((ROOT / "edge" / "entry.py").read_bytes())


def _unpack_wheels(wheels: list[Path], dest: Path) -> None:
    modules = dest / "python_modules"
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                name = info.filename
                if info.is_dir() or name.endswith((".pyc", "/RECORD")) or "__pycache__" in name:
                    continue
                target = modules / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(info))


def _manifest(dest: Path, version: str) -> dict[str, Any]:
    files = {}
    total = 0
    gzip_total = 0
    for path in sorted(p for p in dest.rglob("*") if p.is_file() and p.name != "manifest.json"):
        data = path.read_bytes()
        files[path.relative_to(dest).as_posix()] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
        total += len(data)
        gzip_total += len(gzip.compress(data, mtime=0))
    return {
        "version": version,
        "commit": _git("rev-parse", "HEAD"),
        "created": int(os.environ.get("SOURCE_DATE_EPOCH", time.time())),
        "snapshot_schema": SCHEMA_VERSION,
        "entry": "src/entry.py",
        "files": files,
        "total_size": total,
        "total_gzip_size": gzip_total,
    }


def build_bundle(
    out_dir: Path,
    version: str | None = None,
    *,
    wheel_cache: Path | None = None,
    max_gzip_bytes: int = DEFAULT_MAX_GZIP_BYTES,
    force: bool = False,
) -> Bundle:
    version = version or default_version()
    if problem := version_problem(version):
        raise BundleError(problem)
    dest = out_dir / version
    if dest.exists():
        if not force:
            raise BundleError(f"{dest} exists; bundles are immutable (pass --force to rebuild)")
        shutil.rmtree(dest)
    wheels = fetch_worker_wheels(wheel_cache or ROOT / ".cache" / "worker-wheels")
    staging = out_dir / f".{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _copy_sources(staging)
        _unpack_wheels(wheels, staging)
        shutil.copyfile(ROOT / "wrangler.toml", staging / "wrangler.toml")
        manifest = _manifest(staging, version)
        if manifest["total_gzip_size"] > max_gzip_bytes:
            raise BundleError(
                f"bundle is {manifest['total_gzip_size']} bytes compressed, over the Workers limit of "
                f"{max_gzip_bytes} bytes"
            )
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        staging.rename(dest)  # all or nothing: no half-built bundle under its real name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Bundle(dest, manifest)
