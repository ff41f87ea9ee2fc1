"""``perch``: operator commands.

Snapshot tools work offline on files, which is how an operator checks what
the edge will do with a snapshot before (or after) it is published.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import click

from cli import bundle_store_commands, control_plane_commands
from cli.demo import demo
from core import (
    Arm,
    Block,
    ContextualModel,
    PerchError,
    Segment,
    Snapshot,
    bucket,
    decide,
    decide_ranked,
    decode_snapshot,
    encode_snapshot,
)


def _load(path: Path) -> Snapshot:
    try:
        return decode_snapshot(path.read_bytes())
    except PerchError as exc:
        raise click.ClickException(f"{path}: {exc}") from None


def _summary(snap: Snapshot) -> dict[str, Any]:
    n = len(snap.arms)
    return {
        "experiment": snap.experiment,
        "version": snap.version,
        "created_at": snap.created_at,
        "max_age_s": snap.max_age_s,
        "hash_version": snap.hash_version,
        "default_arm": snap.default_arm,
        "holdout": snap.holdout,
        "floor": snap.floor,
        "arms": [a.key for a in snap.arms],
        "features": sorted(snap.feature_names) if snap.model is None else list(snap.context_features),
        "model": None
        if snap.model is None
        else {
            "kind": "contextual",
            "columns": snap.model.dim,
            "explore": snap.model.explore,
            "blocks": [
                {"kind": b.kind, "inputs": list(b.inputs), "values": len(b.values)} for b in snap.model.blocks
            ],
        },
        "ranking": None
        if snap.ranking is None
        else {
            "slots": snap.ranking.slots,
            "diversity": snap.ranking.diversity,
            "groups": dict(zip((a.key for a in snap.arms), snap.ranking.groups, strict=True)),
            "forced": max(snap.ranking.forced, default=0.0) > 0.0,
            "position_table": bool(len(snap.ranking.positions)),
        },
        "segments": [
            {
                "key": seg.key,
                "features": seg.features,
                "parent": seg.parent,
                "allocation": {a.key: round(snap.allocation[s * n + i], 6) for i, a in enumerate(snap.arms)},
                "posterior_mean": {
                    a.key: round(snap.alpha[s * n + i] / (snap.alpha[s * n + i] + snap.beta[s * n + i]), 6)
                    for i, a in enumerate(snap.arms)
                },
            }
            for s, seg in enumerate(snap.segments)
        ],
    }


@click.group()
@click.version_option(package_name="perch")
def main() -> None:
    """Perch: edge personalization by Thompson sampling."""


@main.group()
def snapshot() -> None:
    """Build, inspect and try out snapshot files."""


@snapshot.command("encode")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def snapshot_encode(spec: Path, output: Path) -> None:
    """Encode a JSON snapshot SPEC (the Snapshot fields) into wire bytes."""
    try:
        raw = json.loads(spec.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise click.ClickException(f"{spec}: expected a JSON object")
        raw["arms"] = [Arm(**a) for a in raw.get("arms", [])]
        raw["segments"] = [Segment(**s) for s in raw.get("segments", [])]
        if isinstance(
            raw.get("model"), dict
        ):  # {blocks: [{kind, inputs, values?, mean?, scale?}], mean, cov, explore?}
            model = dict(raw["model"])
            model["blocks"] = [Block(**b) for b in model.get("blocks", [])]
            raw["model"] = ContextualModel(arms=len(raw["arms"]), **model)
        data = encode_snapshot(Snapshot(**raw))
    except (ValueError, TypeError) as exc:  # JSON, dataclass and snapshot rule errors
        raise click.ClickException(f"{spec}: {exc}") from None
    output.write_bytes(data)
    click.echo(f"wrote {output} ({len(data)} bytes)")


@snapshot.command("inspect")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def snapshot_inspect(path: Path) -> None:
    """Validate a snapshot file and print what it holds, as JSON."""
    click.echo(json.dumps(_summary(_load(path)), indent=2))


@snapshot.command("decide")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--unit", help="Visitor id; omit for an anonymous visitor (fresh draw).")
@click.option("--ctx", "ctx", multiple=True, metavar="FEATURE=VALUE", help="Context feature, repeatable.")
@click.option("--now-ms", type=int, help="Decision time in ms since the epoch (default: now).")
@click.option("--no-consent", is_flag=True, help="Visitor withheld consent (do not personalize).")
@click.option("--seed", type=int, help="Seed for the decision id and anonymous draws.")
@click.option("--primary", help="A ranked snapshot: the visitor's primary interest (the profile's).")
def snapshot_decide(  # noqa: PLR0917 - one parameter per click option
    path: Path,
    unit: str | None,
    ctx: tuple[str, ...],
    now_ms: int | None,
    no_consent: bool,
    seed: int | None,
    primary: str | None,
) -> None:
    """Show the decision the edge would make for one visitor (a ranked snapshot: its list)."""
    context: dict[str, str] = {}
    for item in ctx:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: expected FEATURE=VALUE", param_hint="--ctx")
        context[name] = value
    rng = random.Random(seed) if seed is not None else random.SystemRandom()
    snap = _load(path)
    when = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    if snap.ranking is not None:
        ranked = decide_ranked(
            snap, unit, context, now_ms=when, rng=rng, primary=primary, consent=not no_consent
        )
        click.echo(json.dumps(ranked.to_dict(), indent=2))
        return
    decision = decide(snap, unit, context, now_ms=when, rng=rng, consent=not no_consent)
    click.echo(json.dumps(decision.to_dict(), indent=2))


@main.group()
def edge() -> None:
    """Run the edge Worker's handler locally."""


@edge.command("dev")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8787, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="PERCH_DATA_DIR",
    default=Path(".perch"),
    show_default=True,
    help="Where the local KV store lives ($PERCH_DATA_DIR).",
)
@click.option(
    "--queue-dir",
    "queue_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Send events to this local directory queue (as PERCH_EVENTS_<i> on Workers; repeat for "
    "several) for `perch consume --queue-dir` to store, instead of POSTing them.",
)
def edge_dev(host: str, port: int, data_dir: Path, queue_dirs: tuple[Path, ...]) -> None:
    """Serve the Worker's handler on CPython, reading snapshots from the local KV store.

    Configured like the Worker, from the environment: ORIGIN_URL, CONTROL_PLANE_URL,
    PERCH_EDGE_SECRET, PERCH_IDENTITY_SECRET, PERCH_USER_HEADER, PERCH_CACHE_TTL_S, PERCH_KV_TIMEOUT_S.
    """
    import os

    import httpx
    import uvicorn

    from control_plane.events.queues import DirectoryQueue
    from core import LocalKV
    from edge.config import ConfigError, EdgeConfig
    from edge.local import LocalPlatform, asgi_app
    from edge.visit import Edge

    try:
        config = EdgeConfig.from_vars(os.environ)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    client = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)
    queues = [DirectoryQueue(path) for path in queue_dirs]
    app = asgi_app(Edge(config), LocalPlatform(LocalKV(data_dir), client, queues))
    click.echo(f"perch edge on http://{host}:{port} (KV: {data_dir / 'kv'}, origin: {config.origin_url})")
    uvicorn.run(app, host=host, port=port, log_level="warning", lifespan="on")


@main.command("sign-identity")
@click.argument("user_id")
@click.option(
    "--secret",
    envvar="PERCH_IDENTITY_SECRET",
    required=True,
    help="The secret shared by the site and the edge ($PERCH_IDENTITY_SECRET).",
)
def sign_identity_command(user_id: str, secret: str) -> None:
    """Print the signed identity token for USER_ID (what the site sends as X-Perch-User or perch_user).

    Sites make it in their own stack at login (HMAC-SHA256 over b"perch-identity-v1\\0" + id, as
    core.sign_identity does); this command is for trying it out and for tests.
    """
    from core import sign_identity

    click.echo(sign_identity(secret, user_id))


@main.group()
def bundle() -> None:
    """Build versioned edge bundles."""


@bundle.command("build")
@click.option("--version", "version", help="Bundle version (default: <package version>-<git commit>).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bundles"),
    show_default=True,
)
@click.option("--max-gzip-bytes", type=int, default=None, help="Refuse bundles larger than this, compressed.")
@click.option("--force", is_flag=True, help="Replace an existing bundle of the same version.")
def bundle_build(version: str | None, out_dir: Path, max_gzip_bytes: int | None, force: bool) -> None:
    """Assemble bundles/<version>/: Worker entry, core/, edge/, python_modules/, manifest.json."""
    from deploy.bundle import DEFAULT_MAX_GZIP_BYTES, BundleError, build_bundle

    try:
        built = build_bundle(
            out_dir, version, max_gzip_bytes=max_gzip_bytes or DEFAULT_MAX_GZIP_BYTES, force=force
        )
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    m = built.manifest
    click.echo(
        f"built {built.path}: {len(m['files'])} files, {m['total_size']} bytes ({m['total_gzip_size']} gzip)"
    )
    click.echo(f"deploy: npx wrangler deploy -c {built.path / 'wrangler.toml'}")


@main.command("bucket")
@click.argument("unit")
@click.option("--salt", required=True)
@click.option("--version", "hash_version", type=int, default=1, show_default=True)
def bucket_cmd(unit: str, salt: str, hash_version: int) -> None:
    """Print the bucket in [0, 1) that UNIT hashes to under SALT."""
    try:
        click.echo(repr(bucket(unit, salt, hash_version)))
    except PerchError as exc:
        raise click.ClickException(str(exc)) from None


control_plane_commands.register(main)
bundle_store_commands.register(bundle)
main.add_command(demo)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
