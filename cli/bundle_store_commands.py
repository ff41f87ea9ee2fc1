"""``perch bundle publish``, ``perch bundle list``, ``perch bundle rollback``: bundles in S3 or R2.

Configured from the environment:

    PERCH_S3_BUCKET             required
    PERCH_S3_ENDPOINT_URL       e.g. https://<account>.r2.cloudflarestorage.com (default: AWS S3)
    PERCH_S3_PREFIX             default perch/bundles
    PERCH_S3_REGION             default auto (R2's)
    PERCH_S3_ACCESS_KEY_ID      with PERCH_S3_SECRET_ACCESS_KEY; both unset: boto3's own
    PERCH_S3_SECRET_ACCESS_KEY  credential chain (AWS_* variables, ~/.aws, instance roles)
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from deploy.bundle_store import BundleStore

__all__ = ["newest_bundle", "register", "store_from_env"]


def store_from_env(env: dict[str, str] | None = None) -> BundleStore:
    env = dict(os.environ) if env is None else env
    bucket = env.get("PERCH_S3_BUCKET", "")
    if not bucket:
        raise click.ClickException(
            "set PERCH_S3_BUCKET (and PERCH_S3_ENDPOINT_URL, PERCH_S3_ACCESS_KEY_ID, "
            "PERCH_S3_SECRET_ACCESS_KEY for R2 or another S3-compatible store)"
        )
    key_id = env.get("PERCH_S3_ACCESS_KEY_ID") or None
    secret = env.get("PERCH_S3_SECRET_ACCESS_KEY") or None
    if (key_id is None) != (secret is None):
        raise click.ClickException(
            "set both PERCH_S3_ACCESS_KEY_ID and PERCH_S3_SECRET_ACCESS_KEY, or neither"
        )
    try:
        import boto3  # type: ignore[import-untyped, unused-ignore]

        from deploy.bundle_store import BundleStore

        client = boto3.client(
            "s3",
            endpoint_url=env.get("PERCH_S3_ENDPOINT_URL") or None,
            region_name=env.get("PERCH_S3_REGION") or "auto",
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )
    except ImportError:
        raise click.ClickException("bundle storage needs boto3: pip install boto3") from None
    except Exception as exc:  # botocore's configuration errors (bad endpoint URL, unknown profile ...)
        raise click.ClickException(f"cannot configure the S3 client: {exc}") from None
    return BundleStore(client, bucket, env.get("PERCH_S3_PREFIX") or "perch/bundles")


def newest_bundle(bundles_dir: Path) -> Path:
    """The bundle directory under ``bundles_dir`` whose manifest was created last."""
    found: list[tuple[int, str, Path]] = []
    for manifest in bundles_dir.glob("*/manifest.json"):
        if manifest.parent.name.startswith("."):
            continue  # a build in progress
        try:
            created = json.loads(manifest.read_text(encoding="utf-8")).get("created")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(created, int | float):
            found.append((int(created), manifest.parent.name, manifest.parent))
    if not found:
        raise click.ClickException(f"no bundles in {bundles_dir}; build one with `perch bundle build`")
    return max(found)[2]


def _when(created: Any) -> str:
    if not isinstance(created, int | float):
        return "?"
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@click.command("publish")
@click.option("--version", "version", help="Bundle version to publish (default: the newest built).")
@click.option(
    "--dir",
    "bundles_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bundles"),
    show_default=True,
    help="Where `perch bundle build` wrote the bundles.",
)
@click.option("--no-current", is_flag=True, help="Upload only; leave current.json where it is.")
def publish(version: str | None, bundles_dir: Path, no_current: bool) -> None:
    """Upload a built bundle to S3/R2, verified against its manifest, and make it current."""
    if version is None:
        bundle_dir = newest_bundle(bundles_dir)
    else:
        bundle_dir = bundles_dir / version
        if not (bundle_dir / "manifest.json").is_file():
            raise click.ClickException(
                f"no bundle {version} in {bundles_dir} (no {bundle_dir}/manifest.json)"
            )
    store = store_from_env()
    from deploy.bundle_store import BundleStoreError  # after boto3 is known to be there

    try:
        result = store.publish(bundle_dir, make_current=not no_current)
    except BundleStoreError as exc:
        raise click.ClickException(str(exc)) from None
    done = "already published" if result["already_published"] else "published"
    click.echo(
        f"{done} {result['version']} to {store.url(result['version'])}/: {result['files']} files, "
        f"{result['total_size']} bytes, {result['uploaded']} uploaded now"
    )
    if result["current"]:
        click.echo(f"current: {result['version']}")


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_bundles(as_json: bool) -> None:
    """List the bundles in S3/R2, oldest first; * marks the current one."""
    store = store_from_env()
    from deploy.bundle_store import BundleStoreError  # after boto3 is known to be there

    try:
        entries = store.list()
    except BundleStoreError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo(f"no bundles at {store.url()}/")
        return
    width = max(len(e["version"]) for e in entries)
    for e in entries:
        mark = "*" if e["current"] else " "
        click.echo(
            f"{mark} {e['version']:<{width}}  {_when(e['created'])}  {e['files']:>5} files  "
            f"{e['total_size']:>10} bytes"
        )


@click.command("rollback")
@click.argument("version")
def rollback(version: str) -> None:
    """Make the published bundle VERSION current again (after checking all its files are there)."""
    store = store_from_env()
    from deploy.bundle_store import BundleStoreError  # after boto3 is known to be there

    try:
        pointer = store.rollback(version)
    except BundleStoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"current: {pointer['version']} (previous: {pointer.get('previous')})")


def register(group: click.Group) -> None:
    """Add publish, list and rollback to ``group`` (the ``perch bundle`` group)."""
    for command in (publish, list_bundles, rollback):
        group.add_command(command)
