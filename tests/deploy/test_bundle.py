from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from core import SCHEMA_VERSION
from deploy.bundle import BundleError, build_bundle


def test_bundle_holds_the_worker_and_a_manifest_of_every_file(tmp_path: Path) -> None:
    built = build_bundle(tmp_path, "1.0.0")
    m = built.manifest
    assert (m["version"], m["snapshot_schema"], m["entry"]) == ("1.0.0", SCHEMA_VERSION, "src/entry.py")
    for required in (
        "src/entry.py",
        "src/core/decide.py",
        "src/edge/worker.py",
        "wrangler.toml",
        "python_modules/workers/__init__.py",
        "python_modules/msgpack/__init__.py",
    ):
        assert required in m["files"], required
    assert "src/edge/local.py" not in m["files"]  # CPython-only
    assert not [f for f in m["files"] if f.endswith(".pyc")]
    on_disk = {p.relative_to(built.path).as_posix() for p in built.path.rglob("*") if p.is_file()}
    assert on_disk - {"manifest.json"} == set(m["files"])
    for name, meta in m["files"].items():
        data = (built.path / name).read_bytes()
        assert meta == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert m["total_size"] == sum(f["size"] for f in m["files"].values())
    assert json.loads((built.path / "manifest.json").read_text()) == m


def test_same_sources_same_hashes(tmp_path: Path) -> None:
    first = build_bundle(tmp_path, "a").manifest["files"]
    second = build_bundle(tmp_path, "b").manifest["files"]
    assert first == second


def test_refuses_a_bundle_over_the_size_limit_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="over the Workers limit of 1000 bytes"):
        build_bundle(tmp_path, "big", max_gzip_bytes=1000)
    assert list(tmp_path.iterdir()) == []


def test_bundles_are_immutable_unless_forced(tmp_path: Path) -> None:
    build_bundle(tmp_path, "v1")
    with pytest.raises(BundleError, match="bundles are immutable"):
        build_bundle(tmp_path, "v1")
    build_bundle(tmp_path, "v1", force=True)


def test_cli_build(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bundle", "build", "--out", str(tmp_path), "--version", "cli-1"])
    assert result.exit_code == 0, result.output
    assert "deploy: npx wrangler deploy -c" in result.output
    bad = CliRunner().invoke(main, ["bundle", "build", "--out", str(tmp_path), "--version", "../x"])
    assert bad.exit_code == 1 and "plain directory name" in bad.output
