"""``make demo`` / ``perch demo``: the whole loop on this machine, measured.

Starts the control plane (SQLite, local KV) and the edge runner as real
processes on loopback, defines a homepage-hero experiment whose best variant
differs by segment, sends simulated visitors through the edge over HTTP —
cookies, consent headers, outcome beacons through the edge — while the
learner publishes every few seconds, then reports Perch against a uniform
A/B split and against the oracle that knows the true rates, on the same
visitors and the same random numbers.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import click
import httpx

from cli.demo_recs import RECS, ListOutcome, print_recs_report, recs_spec, summarize_recs
from cli.demo_report import print_profiles_report, print_report, summarize, summarize_profiles, write_files
from cli.demo_visitors import (
    EXPERIMENT,
    Outcome,
    Visit,
    experiment_spec,
    population,
    simulate,
)
from cli.procs import NotUp, free_port, start_perch, stop, terminate_as_interrupt, wait_http


def _wait_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        wait_http(url, proc, timeout_s=60, log=log)
    except NotUp as exc:
        raise click.ClickException(str(exc)) from None


def _launch(
    procs: list[subprocess.Popen[bytes]],
    data_dir: Path,
    env: dict[str, str],
    cp_port: int,
    edge_port: int,
    *,
    profiles: bool = False,
) -> None:
    cp_url, edge_url = f"http://127.0.0.1:{cp_port}", f"http://127.0.0.1:{edge_port}"
    cp_log, edge_log, consume_log = (
        data_dir / "control-plane.log",
        data_dir / "edge.log",
        data_dir / "consume.log",
    )
    serve = ["serve", "--port", str(cp_port)]
    procs.append(start_perch(serve, {**env, "PERCH_PUBLISH_INTERVAL_S": "2"}, cp_log, own_session=True))
    _wait_up(f"{cp_url}/healthz", procs[0], cp_log)
    # The production event path: the edge's outbox sends its events to a queue (here a local
    # directory queue, on Workers a Cloudflare queue) and `perch consume` stores them.
    queue = str(data_dir / "queue")
    consume = ["consume", "--queue-dir", queue, "--idle-max", "0.2"]
    procs.append(start_perch(consume, env, consume_log, own_session=True))
    deadline = time.monotonic() + 60
    while "perch consume:" not in consume_log.read_text():
        if procs[-1].poll() is not None or time.monotonic() > deadline:
            raise click.ClickException(f"perch consume did not start; see {consume_log}")
        time.sleep(0.05)
    # The edge gathers the events of overlapping requests for 250 ms into a few queue messages:
    # thousands of visitors a second would otherwise mean thousands of one-event messages.
    edge_env = {
        **env,
        "CONTROL_PLANE_URL": cp_url,
        "ORIGIN_URL": cp_url,
        "PERCH_CACHE_TTL_S": "1",
        "PERCH_EVENT_LINGER_MS": "250",
        # --profiles: profiles are rebuilt every 2 s; an isolate notices a new one within 2 s.
        **({"PERCH_PROFILE_TTL_S": "2"} if profiles else {"PERCH_PROFILES": "off"}),
    }
    edge = ["edge", "dev", "--port", str(edge_port), "--queue-dir", queue]
    procs.append(start_perch(edge, edge_env, edge_log, own_session=True))
    _wait_up(f"{edge_url}/v1/health", procs[-1], edge_log)


def _drained(data_dir: Path, timeout_s: float = 60.0) -> None:
    """Wait until the consumer has stored (and acknowledged) every queued message."""
    from control_plane.events.queues import DirectoryQueue

    queue, deadline = DirectoryQueue(data_dir / "queue"), time.monotonic() + timeout_s
    while queue.depth().total and time.monotonic() < deadline:
        time.sleep(0.1)


def _fresh(data_dir: Path) -> None:
    """Start from an empty database and KV, keeping the directory (and its logs) where it is."""
    for stale in ("perch.db", "perch.db-wal", "perch.db-shm"):
        (data_dir / stale).unlink(missing_ok=True)
    if (data_dir / "kv").exists():
        for old in (data_dir / "kv").iterdir():
            old.unlink()
    shutil.rmtree(data_dir / "queue", ignore_errors=True)
    data_dir.mkdir(parents=True, exist_ok=True)


@click.command("demo")
@click.option("--visitors", type=int, default=50_000, show_default=True)
@click.option("--concurrency", type=int, default=16, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=1.0),
    default=1_500.0,
    show_default=True,
    help="Visitors a second: with a publish every 2 s, about 3,000 visits between snapshots.",
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".perch/demo"),
    show_default=True,
)
@click.option("--exit", "exit_after", is_flag=True, help="Stop the servers after the report (for tests).")
@click.option(
    "--profiles",
    is_flag=True,
    help="Visitors whose browsed interest decides their best variant: the hero with and without "
    "profile features, on the same visits.",
)
def demo(
    *,
    visitors: int,
    concurrency: int,
    rate: float,
    seed: int,
    data_dir: Path,
    exit_after: bool,
    profiles: bool,
) -> None:
    """Run the whole loop locally and report Perch against uniform and oracle."""
    started = time.monotonic()
    _fresh(data_dir)
    token, secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    cp_port, edge_port = free_port(8000), free_port(8787)
    cp_url, edge_url = f"http://127.0.0.1:{cp_port}", f"http://127.0.0.1:{edge_port}"
    env = {
        **os.environ,
        "PERCH_DATA_DIR": str(data_dir),
        "PERCH_ADMIN_TOKEN": token,
        "PERCH_EDGE_SECRET": secret,
        "PERCH_DATABASE_URL": "",
    }
    procs: list[subprocess.Popen[bytes]] = []
    # SIGTERM (a service manager, `timeout`) stops the servers too, as Ctrl-C does.
    with terminate_as_interrupt():
        try:
            click.echo(f"control plane {cp_url}, edge {edge_url}, data in {data_dir}")
            _launch(procs, data_dir, env, cp_port, edge_port, profiles=profiles)
            admin = httpx.Client(base_url=cp_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
            visits = population(visitors, seed, interests=profiles)
            if profiles:
                _profiles_demo(admin, edge_url, data_dir, visits, concurrency=concurrency, rate=rate)
                click.echo(f"  ({time.monotonic() - started:.0f} s)")
                return
            outcomes, report = _run_experiment(
                admin, edge_url, data_dir, visits, concurrency=concurrency, rate=rate
            )
            summary = summarize(visits, outcomes)
            files = write_files(data_dir, visits, outcomes, summary)
            print_report(summary, report, files, time.monotonic() - started)
            click.echo("")
            click.secho(f"Dashboard: {cp_url}/  (log in with the admin token {token})", bold=True)
            if summary["errors"] > 0 or report is None:
                raise click.ClickException("the demo saw failures (see above)")
            if not exit_after:
                _keep_serving(procs, data_dir)
        except KeyboardInterrupt:
            click.echo("\nstopping")
        finally:
            stop(*procs, timeout_s=10)


def _through_edge(
    admin: httpx.Client,
    edge_url: str,
    data_dir: Path,
    visits: list[Visit],
    specs: list[dict[str, Any]],
    *,
    concurrency: int,
    rate: float,
) -> tuple[list[Outcome], list[Outcome], list[ListOutcome]]:
    """Define and publish ``specs``, send ``visits`` through the edge, and wait until every event is
    stored: each visit's outcome in the first experiment, and in the profile world its outcome in the
    second and its recommendations list."""
    for spec in specs:
        created = admin.post("/v1/experiments", json=spec)
        if created.status_code != 201:
            raise click.ClickException(f"creating the experiment failed: {created.text}")
        admin.post(f"/v1/experiments/{spec['key']}/publish").raise_for_status()
    with click.progressbar(
        length=len(visits), label="visitors through the edge", show_pos=True, show_eta=True
    ) as bar:
        outcomes = asyncio.run(simulate(edge_url, visits, concurrency, rate, bar, profiles=len(specs) > 1))
    time.sleep(1.0)  # the edge's last batch and beacons
    _drained(data_dir)
    return outcomes


def _run_experiment(
    admin: httpx.Client, edge_url: str, data_dir: Path, visits: list[Visit], *, concurrency: int, rate: float
) -> tuple[list[Outcome], dict[str, Any] | None]:
    """The hero through the edge, then one more publish: each visit's outcome, and the control
    plane's report (None if it has none)."""
    outcomes, _, _ = _through_edge(
        admin, edge_url, data_dir, visits, [experiment_spec()], concurrency=concurrency, rate=rate
    )
    admin.post(f"/v1/experiments/{EXPERIMENT}/publish").raise_for_status()
    report = admin.get(f"/v1/experiments/{EXPERIMENT}/report")
    return outcomes, report.json() if report.status_code == 200 else None


def _profiles_demo(
    admin: httpx.Client, edge_url: str, data_dir: Path, visits: list[Visit], *, concurrency: int, rate: float
) -> None:
    """The hero without and with profile features, decided on the same visits."""
    started = time.monotonic()
    specs = [experiment_spec(), experiment_spec(profiles=True), recs_spec()]
    without, with_profiles, lists = _through_edge(
        admin, edge_url, data_dir, visits, specs, concurrency=concurrency, rate=rate
    )
    summary = summarize_profiles(visits, without, with_profiles)
    admin.post(f"/v1/experiments/{RECS}/publish").raise_for_status()
    report = admin.get(f"/v1/experiments/{RECS}/report")
    summary["recommendations"] = summarize_recs(
        [v.interest for v in visits], lists, report.json() if report.status_code == 200 else None
    )
    (data_dir / "summary-profiles.json").write_text(json.dumps(summary, indent=2))
    print_profiles_report(summary, time.monotonic() - started)
    print_recs_report(summary["recommendations"])
    recs = summary["recommendations"]
    errors = summary["without_profiles"]["errors"] + summary["with_profiles"]["errors"] + recs["errors"]
    if errors:
        seen = (
            summary["without_profiles"]["error_examples"]
            + summary["with_profiles"]["error_examples"]
            + recs["error_examples"]
        )
        raise click.ClickException(f"{errors} visits failed: {sorted(set(seen))}")
    if recs["lists_below_quota"]:
        raise click.ClickException(
            f"{recs['lists_below_quota']} recommendation lists broke the diversity quota"
        )


def _keep_serving(procs: list[subprocess.Popen[bytes]], data_dir: Path) -> None:
    """Leave the servers up for a look at the dashboard until Ctrl-C (or until one dies)."""
    click.echo("The control plane and the edge keep running; press Ctrl-C to stop them.")
    while all(p.poll() is None for p in procs):
        time.sleep(1)
    raise click.ClickException("a server stopped unexpectedly; see the logs in " + str(data_dir))
