"""Bundle storage against moto's S3 running as a real HTTP server, with real bundles."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]
import click
import pytest
from click.testing import CliRunner
from moto.server import ThreadedMotoServer

from cli.bundle_store_commands import register
from deploy.bundle import build_bundle
from deploy.bundle_store import BundleStore, BundleStoreError

pytestmark = pytest.mark.process

PREFIX = "perch/bundles"
NOW = 1_790_000_000
KEY_ID, SECRET = "testing-key-id", "testing-secret"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: a free one
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(endpoint: str) -> Iterator[Any]:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )
    yield client
    client.close()


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"perch-test-{uuid.uuid4().hex[:12]}"  # a fresh bucket per test: moto's state is shared
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(s3: Any, bucket: str) -> BundleStore:
    return BundleStore(s3, bucket, PREFIX, clock=lambda: NOW)


def build(root: Path, version: str, created: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(created))
    return build_bundle(root, version).path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 (created first) and v2 (created later), built once for the module."""
    root = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as patch:
        build(root, "v1", 1_700_000_000, patch)
        build(root, "v2", 1_700_000_100, patch)
    return root


@pytest.fixture
def bundles(built: Path, tmp_path: Path) -> Path:
    """A copy of the built bundles that a test may change."""
    return Path(shutil.copytree(built, tmp_path / "bundles"))


def manifest(bundle: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    return doc


def keys(s3: Any, bucket: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def get(s3: Any, bucket: str, key: str) -> bytes:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        data: bytes = body.read()
    finally:
        body.close()
    return data


def pointer(s3: Any, bucket: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(get(s3, bucket, f"{PREFIX}/current.json"))
    return doc


def rewrite(bundle: Path, name: str, data: bytes) -> None:
    """Change a file and its manifest entry consistently: a different, valid bundle."""
    (bundle / name).write_bytes(data)
    doc = manifest(bundle)
    doc["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def test_publish_uploads_every_file_checksummed_then_the_manifest_then_current(
    store: BundleStore, s3: Any, bucket: str, bundles: Path
) -> None:
    bundle = bundles / "v1"
    files = manifest(bundle)["files"]
    manifest_sha = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()

    result = store.publish(bundle)

    assert result == {
        "version": "v1",
        "manifest_sha256": manifest_sha,
        "files": len(files),
        "uploaded": len(files),
        "total_size": sum(f["size"] for f in files.values()),
        "already_published": False,
        "current": True,
    }
    expected = {f"{PREFIX}/v1/{name}" for name in files} | {
        f"{PREFIX}/v1/manifest.json",
        f"{PREFIX}/current.json",
    }
    assert keys(s3, bucket) == expected
    for name, meta in files.items():
        key = f"{PREFIX}/v1/{name}"
        assert hashlib.sha256(get(s3, bucket, key)).hexdigest() == meta["sha256"], name
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert base64.b64decode(head["ChecksumSHA256"]).hex() == meta["sha256"], name
    assert get(s3, bucket, f"{PREFIX}/v1/manifest.json") == (bundle / "manifest.json").read_bytes()
    assert pointer(s3, bucket) == {
        "version": "v1",
        "manifest_sha256": manifest_sha,
        "previous": None,
        "updated": NOW,
    }


@pytest.mark.parametrize("prefix", [PREFIX, "", "/nested/deeper/"])
def test_list_current_and_rollback(s3: Any, bucket: str, bundles: Path, prefix: str) -> None:
    store = BundleStore(s3, bucket, prefix, clock=lambda: NOW)
    assert store.list() == []
    assert store.current() is None
    store.publish(bundles / "v1")
    store.publish(bundles / "v2")
    size = manifest(bundles / "v1")["total_size"]
    n = len(manifest(bundles / "v1")["files"])

    assert store.list() == [
        {"version": "v1", "created": 1_700_000_000, "total_size": size, "files": n, "current": False},
        {"version": "v2", "created": 1_700_000_100, "total_size": size, "files": n, "current": True},
    ]
    assert store.current() == "v2"
    assert (store.pointer() or {}).get("previous") == "v1"

    moved = store.rollback("v1")
    assert moved["version"] == "v1"
    assert moved["previous"] == "v2"
    assert store.current() == "v1"
    assert [e["current"] for e in store.list()] == [True, False]
    v1_manifest = (bundles / "v1" / "manifest.json").read_bytes()
    assert moved["manifest_sha256"] == hashlib.sha256(v1_manifest).hexdigest()

    assert store.rollback("v1") == moved  # already current: nothing changes


def test_publish_without_moving_current(store: BundleStore, bundles: Path) -> None:
    store.publish(bundles / "v1")
    result = store.publish(bundles / "v2", make_current=False)
    assert result["current"] is False
    assert store.current() == "v1"
    assert [e["version"] for e in store.list()] == ["v1", "v2"]


def test_republishing_the_same_bundle_is_idempotent(
    store: BundleStore, s3: Any, bucket: str, bundles: Path
) -> None:
    first = store.publish(bundles / "v1")
    before = {k: get(s3, bucket, k) for k in keys(s3, bucket)}
    again = store.publish(bundles / "v1")
    assert again == {**first, "uploaded": 0, "already_published": True}
    assert {k: get(s3, bucket, k) for k in keys(s3, bucket)} == before  # current.json not rewritten either


def test_an_interrupted_publish_resumes(store: BundleStore, s3: Any, bucket: str, bundles: Path) -> None:
    store.publish(bundles / "v1", make_current=False)
    s3.delete_object(Bucket=bucket, Key=f"{PREFIX}/v1/manifest.json")
    s3.delete_object(Bucket=bucket, Key=f"{PREFIX}/v1/src/core/decide.py")
    assert store.list() == []  # no manifest, no version

    result = store.publish(bundles / "v1")
    assert (result["uploaded"], result["already_published"]) == (1, False)
    assert [e["version"] for e in store.list()] == ["v1"]
    assert (
        get(s3, bucket, f"{PREFIX}/v1/src/core/decide.py") == (bundles / "v1/src/core/decide.py").read_bytes()
    )


def test_different_content_under_a_published_version_is_refused(
    store: BundleStore, s3: Any, bucket: str, bundles: Path, tmp_path: Path
) -> None:
    store.publish(bundles / "v1")
    before = {k: get(s3, bucket, k) for k in keys(s3, bucket)}
    other = tmp_path / "elsewhere" / "v1"
    shutil.copytree(bundles / "v1", other)
    rewrite(other, "src/core/decide.py", b"# something else\n")

    with pytest.raises(BundleStoreError, match=r"bundle v1 is already published .* \(src/core/decide.py\);"):
        store.publish(other)
    assert {k: get(s3, bucket, k) for k in keys(s3, bucket)} == before


def test_a_tampered_local_file_is_refused_before_any_upload(
    store: BundleStore, s3: Any, bucket: str, bundles: Path
) -> None:
    (bundles / "v1" / "src/edge/routing.py").write_text("tampered = True\n")
    (bundles / "v1" / "wrangler.toml").unlink()
    with pytest.raises(BundleStoreError, match="does not match its manifest") as caught:
        store.publish(bundles / "v1")
    assert "src/edge/routing.py: differs from the manifest" in str(caught.value)
    assert "wrangler.toml: No such file or directory" in str(caught.value)
    assert keys(s3, bucket) == set()


def test_a_leftover_object_with_other_content_is_not_overwritten(
    store: BundleStore, s3: Any, bucket: str, bundles: Path
) -> None:
    key = f"{PREFIX}/v1/src/core/decide.py"
    s3.put_object(Bucket=bucket, Key=key, Body=b"from an earlier, different build")
    with pytest.raises(BundleStoreError, match=rf"s3://{bucket}/{key} holds other content \(size 32"):
        store.publish(bundles / "v1")
    assert get(s3, bucket, key) == b"from an earlier, different build"
    assert f"{PREFIX}/v1/manifest.json" not in keys(s3, bucket)
    assert store.current() is None


class Interloper:
    """The real client, but another writer puts ``body`` at ``key`` right after our first look at it."""

    def __init__(self, s3: Any, key: str, body: bytes) -> None:
        self._s3, self.key, self.body, self.done = s3, key, body, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)

    def head_object(self, **kwargs: Any) -> Any:
        try:
            return self._s3.head_object(**kwargs)
        finally:
            if kwargs["Key"] == self.key and not self.done:
                self.done = True
                self._s3.put_object(Bucket=kwargs["Bucket"], Key=self.key, Body=self.body)


def test_a_file_written_by_someone_else_between_check_and_upload_is_kept(
    s3: Any, bucket: str, bundles: Path
) -> None:
    key = f"{PREFIX}/v1/src/core/decide.py"
    store = BundleStore(Interloper(s3, key, b"theirs"), bucket, PREFIX)
    with pytest.raises(BundleStoreError, match=r"decide\.py holds other content \(size 6"):
        store.publish(bundles / "v1")
    assert get(s3, bucket, key) == b"theirs"


def test_a_concurrent_publish_of_other_files_under_the_same_version_wins_alone(
    s3: Any, bucket: str, bundles: Path
) -> None:
    key = f"{PREFIX}/v1/manifest.json"
    theirs = manifest(bundles / "v1")
    theirs["files"]["src/core/decide.py"] = {"sha256": "0" * 64, "size": 1}
    body = json.dumps(theirs).encode()
    store = BundleStore(Interloper(s3, key, body), bucket, PREFIX)
    with pytest.raises(BundleStoreError, match=r"bundle v1 is already published .* \(src/core/decide\.py\)"):
        store.publish(bundles / "v1")
    assert get(s3, bucket, key) == body
    assert store.current() is None


def test_a_concurrent_publish_of_the_same_bundle_is_fine(s3: Any, bucket: str, bundles: Path) -> None:
    key = f"{PREFIX}/v1/manifest.json"
    same = (bundles / "v1" / "manifest.json").read_bytes()
    result = BundleStore(Interloper(s3, key, same), bucket, PREFIX).publish(bundles / "v1")
    assert result["current"] is True
    assert get(s3, bucket, key) == same


def test_rollback_refuses_a_version_with_missing_or_changed_files(
    store: BundleStore, s3: Any, bucket: str, bundles: Path
) -> None:
    store.publish(bundles / "v1")
    store.publish(bundles / "v2")
    s3.delete_object(Bucket=bucket, Key=f"{PREFIX}/v1/src/edge/routing.py")
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/v1/wrangler.toml", Body=b"short")

    with pytest.raises(BundleStoreError, match=r"bundle v1 .* is damaged") as caught:
        store.rollback("v1")
    message = str(caught.value)
    assert "src/edge/routing.py: missing" in message
    assert (
        f"wrangler.toml: size 5, expected {manifest(bundles / 'v1')['files']['wrangler.toml']['size']}"
        in message
    )
    assert store.current() == "v2"


def test_rollback_to_an_unknown_version_names_the_known_ones(store: BundleStore, bundles: Path) -> None:
    store.publish(bundles / "v1")
    with pytest.raises(BundleStoreError, match=r"no bundle v9 at .* \(published: v1\)"):
        store.rollback("v9")
    with pytest.raises(BundleStoreError, match="must be a plain directory name"):
        store.rollback("../v1")


def test_moving_current_refuses_to_overwrite_a_concurrent_change(s3: Any, bucket: str, bundles: Path) -> None:
    def clock() -> float:  # runs between reading current.json and writing it: another operator acts
        s3.put_object(Bucket=bucket, Key=f"{PREFIX}/current.json", Body=b'{"version": "v1"}')
        return NOW

    store = BundleStore(s3, bucket, PREFIX, clock=lambda: NOW)
    store.publish(bundles / "v1")
    racing = BundleStore(s3, bucket, PREFIX, clock=clock)
    with pytest.raises(BundleStoreError, match=r"current\.json changed while it was being moved to v2"):
        racing.publish(bundles / "v2")
    assert pointer(s3, bucket) == {"version": "v1"}


def test_s3_errors_are_bundle_store_errors(s3: Any, bundles: Path) -> None:
    store = BundleStore(s3, "perch-no-such-bucket", PREFIX)
    with pytest.raises(BundleStoreError, match="NoSuchBucket"):
        store.list()
    with pytest.raises(BundleStoreError, match="NoSuchBucket"):
        store.publish(bundles / "v1")


# -- the CLI ------------------------------------------------------------------------------------------


@pytest.fixture
def cli() -> click.Group:
    group = click.Group("bundle")
    register(group)
    return group


@pytest.fixture
def cli_env(endpoint: str, bucket: str) -> dict[str, str]:
    return {
        "PERCH_S3_ENDPOINT_URL": endpoint,
        "PERCH_S3_BUCKET": bucket,
        "PERCH_S3_REGION": "us-east-1",
        "PERCH_S3_ACCESS_KEY_ID": KEY_ID,
        "PERCH_S3_SECRET_ACCESS_KEY": SECRET,
    }


def test_cli_publish_list_rollback(
    cli: click.Group, cli_env: dict[str, str], s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = cli_env["PERCH_S3_BUCKET"]
    root = tmp_path / "bundles"
    build(root, "b-older", 1_700_000_000, monkeypatch)
    build(root, "a-newer", 1_700_000_500, monkeypatch)  # newest by "created", not by name or build order
    runner = CliRunner(env=cli_env)

    result = runner.invoke(cli, ["publish", "--dir", str(root)])
    assert result.exit_code == 0, result.output
    assert f"published a-newer to s3://{bucket}/{PREFIX}/a-newer/" in result.output
    assert "current: a-newer" in result.output

    result = runner.invoke(cli, ["publish", "--dir", str(root), "--version", "b-older"])
    assert result.exit_code == 0, result.output
    assert pointer(s3, bucket)["version"] == "b-older"

    result = runner.invoke(cli, ["list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[:2] for line in lines] == [["*", "b-older"], ["a-newer", "2023-11-14"]]

    result = runner.invoke(cli, ["list", "--json"])
    assert [(e["version"], e["current"]) for e in json.loads(result.output)] == [
        ("b-older", True),
        ("a-newer", False),
    ]

    result = runner.invoke(cli, ["rollback", "a-newer"])
    assert result.exit_code == 0, result.output
    assert "current: a-newer (previous: b-older)" in result.output

    result = runner.invoke(cli, ["rollback", "nope"])
    assert result.exit_code == 1
    assert "no bundle nope" in result.output


def test_cli_configuration_errors(cli: click.Group, cli_env: dict[str, str], tmp_path: Path) -> None:
    no_bucket = {**cli_env, "PERCH_S3_BUCKET": ""}
    result = CliRunner(env=no_bucket).invoke(cli, ["list"])
    assert result.exit_code == 1
    assert "set PERCH_S3_BUCKET" in result.output

    half_keys = {**cli_env, "PERCH_S3_SECRET_ACCESS_KEY": ""}
    result = CliRunner(env=half_keys).invoke(cli, ["list"])
    assert result.exit_code == 1
    assert "set both PERCH_S3_ACCESS_KEY_ID and PERCH_S3_SECRET_ACCESS_KEY" in result.output

    result = CliRunner(env=cli_env).invoke(cli, ["publish", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "no bundles in" in result.output

    result = CliRunner(env=cli_env).invoke(cli, ["publish", "--dir", str(tmp_path), "--version", "x"])
    assert result.exit_code == 1
    assert "no bundle x in" in result.output
