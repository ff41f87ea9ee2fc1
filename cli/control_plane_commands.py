"""``perch serve``, ``perch consume``, ``perch experiments ...``, ``perch publish``, ``perch db upgrade``.

``serve`` runs the control plane and ``consume`` stores queued event batches; the others are clients
of its HTTP API (``PERCH_URL``, default http://127.0.0.1:8000, with ``PERCH_ADMIN_TOKEN``), so an
operator's laptop needs no database access.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import httpx

if TYPE_CHECKING:  # imported when a command runs: `perch --help` stays quick
    from control_plane.events.queues import MessageSource
    from control_plane.settings import Settings

__all__ = ["register"]


def _api(method: str, path: str, body: Any = None) -> Any:
    url = os.environ.get("PERCH_URL", "http://127.0.0.1:8000").rstrip("/")
    token = os.environ.get("PERCH_ADMIN_TOKEN")
    if not token:
        raise click.ClickException("set PERCH_ADMIN_TOKEN (and PERCH_URL if not http://127.0.0.1:8000)")
    try:
        response = httpx.request(
            method, url + path, json=body, timeout=60, headers={"Authorization": f"Bearer {token}"}
        )
    except httpx.TransportError as exc:
        raise click.ClickException(f"cannot reach the control plane at {url}: {exc}") from None
    try:
        doc = response.json()
    except ValueError:
        doc = {"error": response.text}
    if response.status_code >= 400:
        raise click.ClickException(f"{response.status_code}: {doc.get('error', doc)}")
    return doc


def _echo(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
def serve(host: str, port: int) -> None:
    """Run the control plane (settings from PERCH_* environment variables)."""
    import uvicorn

    from control_plane.main import app_from_env

    try:
        app = app_from_env(dict(os.environ))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"perch control plane on http://{host}:{port}")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@click.group("experiments")
def experiments() -> None:
    """Create, list and show experiments through the API."""


@experiments.command("create")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def experiments_create(spec: Path) -> None:
    """Create the experiment defined in the JSON file SPEC."""
    try:
        doc = json.loads(spec.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{spec}: not JSON ({exc})") from None
    _echo(_api("POST", "/v1/experiments", doc))


@experiments.command("list")
@click.option("--archived", is_flag=True, help="Include archived experiments.")
def experiments_list(archived: bool) -> None:
    """One line per experiment: key, version, arms, features."""
    for e in _api("GET", "/v1/experiments" + ("?archived=true" if archived else ""))["experiments"]:
        arms = ",".join(a["key"] for a in e["arms"])
        state = " (archived)" if e["archived"] else ""
        click.echo(f"{e['key']}\tv{e['version']}\tarms={arms}\tfeatures={','.join(e['features'])}{state}")


@experiments.command("show")
@click.argument("key")
def experiments_show(key: str) -> None:
    """Everything about one experiment: spec, snapshots, counters, history."""
    _echo(_api("GET", f"/v1/experiments/{key}"))


@click.command("publish")
@click.argument("key")
def publish(key: str) -> None:
    """Learn and publish KEY now."""
    _echo(_api("POST", f"/v1/experiments/{key}/publish"))


@click.group("db")
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations to PERCH_DATABASE_URL (serve does this at startup too)."""
    from control_plane.storage.store import Store

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    Store.from_url(settings.database_url, settings.unit_salt).migrate()
    click.echo("database is at the latest schema", file=sys.stderr)


def _publisher(settings: Any, store: Any) -> Callable[[bool], None]:
    """Every publish interval, and when the consumer stops (--until-empty), one publish cycle and
    one profile cycle."""
    import logging
    import time

    from control_plane.learning.publish import Gate, publish_all
    from control_plane.main import kv_publisher
    from control_plane.metrics import Metrics
    from control_plane.profiles.builder import ProfileSettings, profile_cycle

    kv, metrics = kv_publisher(settings), Metrics()
    last = [time.monotonic()]

    def cycle(final: bool) -> None:
        if time.monotonic() - last[0] < settings.publish_interval_s and not final:
            return
        last[0] = time.monotonic()
        try:
            publish_all(
                store,
                kv,
                metrics,
                now_ms=lambda: int(time.time() * 1000),
                draws=settings.learner_draws,
                gate=Gate(tolerance=settings.promotion_tolerance),
            )
        except Exception:  # consuming must outlive one bad cycle, as serve's schedule does
            logging.getLogger("perch.consume").exception("publish cycle failed")
        try:  # with events in chDB, serve has no schedule: the profiles are built here too
            profiles = ProfileSettings(attributes=settings.profile_attributes)
            profile_cycle(store, kv, profiles, int(time.time() * 1000))
        except Exception:
            logging.getLogger("perch.consume").exception("profile cycle failed")

    return cycle


@click.command("consume")
@click.option(
    "--queue-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="A local directory queue (what `perch edge dev --queue-dir` writes).",
)
@click.option(
    "--cloudflare-queue",
    metavar="QUEUE_ID",
    help="A Cloudflare queue with an HTTP pull consumer (PERCH_CF_ACCOUNT_ID, PERCH_CF_API_TOKEN).",
)
@click.option("--max-events", type=click.IntRange(1, 50_000), default=5_000, show_default=True)
@click.option(
    "--visibility-timeout",
    type=click.FloatRange(1.0, 12 * 3600.0),
    default=120.0,
    show_default=True,
    help="Seconds a pulled message stays leased; unacknowledged after that, it is delivered again.",
)
@click.option(
    "--idle-max",
    type=click.FloatRange(0.01, 60.0),
    default=2.0,
    show_default=True,
    help="Longest pause between polls of an empty queue (the pause doubles from 50 ms up to it).",
)
@click.option("--until-empty", is_flag=True, help="Stop once the queue is empty (backfills, tests).")
@click.option(
    "--events-url",
    metavar="URL",
    help="Store the events in ClickHouse: chdb:///path or clickhouse://user:pass@host:8123/db "
    "(default PERCH_EVENTS_URL; unset: in PERCH_DATABASE_URL).",
)
@click.option(
    "--publish",
    is_flag=True,
    help="Also learn and publish every PERCH_PUBLISH_INTERVAL_S from this process (and once on exit with "
    "--until-empty): what chDB needs, which serves one process per data path.",
)
def consume(  # noqa: PLR0917 - one parameter per click option
    queue_dir: Path | None,
    cloudflare_queue: str | None,
    max_events: int,
    visibility_timeout: float,
    idle_max: float,
    until_empty: bool,
    events_url: str | None,
    publish: bool,
) -> None:
    """Store the edge's event batches from a queue (settings from PERCH_* variables).

    Acknowledges each group of messages only after it is committed: run as many consumers as you
    like, kill them at will; a redelivered message counts nothing twice. For exact binary rewards
    run one consumer per queue (the edge routes each decision's events to one queue).
    """
    import logging
    import signal

    from control_plane.events.consume import Consumer
    from control_plane.events.queues import QueueError
    from control_plane.storage.store import Store

    settings = _settings()
    if events_url is not None:
        from dataclasses import replace

        from control_plane.settings import SettingsError

        try:
            settings = replace(settings, events_url=events_url)
        except SettingsError as exc:
            raise click.ClickException(str(exc)) from None
    source = _queue_source(settings, queue_dir, cloudflare_queue)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store.from_url(settings.database_url, settings.unit_salt)
    store.migrate()
    sink, into = None, store.engine.url.render_as_string()
    if settings.events_url:
        from control_plane.events.clickhouse_sink import ClickHouseSink
        from control_plane.storage.clickhouse import ClickHouseError, executor_for
        from control_plane.storage.clickhouse_events import EventLog

        try:
            events = EventLog(executor_for(settings.events_url))
            events.migrate()
        except ClickHouseError as exc:
            raise click.ClickException(str(exc)) from None
        sink, into = ClickHouseSink(store, events), settings.events_url.split("@")[-1]
        store.events = events
    consumer = Consumer(
        store,
        source,
        settings.edge_secret,
        max_events=max_events,
        visibility_timeout_s=visibility_timeout,
        idle_min_s=min(0.05, idle_max),
        idle_max_s=idle_max,
        sink=sink,
        between=_publisher(settings, store) if publish else None,
    )
    stopping: list[int] = []
    # SIGTERM ends the current group properly (commit, then ack) instead of abandoning it mid-way.
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    click.echo(f"perch consume: {source!r} into {into}", err=True)
    try:
        result = consumer.run(until_empty=until_empty, stop=lambda: bool(stopping))
    except QueueError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        result = consumer.stats
    finally:
        signal.signal(signal.SIGTERM, previous)
        store.engine.dispose()
    click.echo(json.dumps(result.to_dict(), sort_keys=True))


def _settings() -> Settings:
    from control_plane.settings import Settings, SettingsError

    try:
        return Settings.from_env(dict(os.environ))
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _queue_source(settings: Settings, queue_dir: Path | None, cloudflare_queue: str | None) -> MessageSource:
    from control_plane.events.cloudflare_queue import CloudflareQueue
    from control_plane.events.queues import DirectoryQueue

    if (queue_dir is None) == (cloudflare_queue is None):
        raise click.ClickException("give exactly one of --queue-dir DIR or --cloudflare-queue QUEUE_ID")
    if queue_dir is not None:
        return DirectoryQueue(queue_dir)
    if not (settings.cf_account_id and settings.cf_api_token):
        raise click.ClickException("--cloudflare-queue needs PERCH_CF_ACCOUNT_ID and PERCH_CF_API_TOKEN")
    return CloudflareQueue(settings.cf_account_id, cloudflare_queue or "", settings.cf_api_token)


def register(group: click.Group) -> None:
    for command in (serve, experiments, publish, db, consume):
        group.add_command(command)
