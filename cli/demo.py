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
import random
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx

from cli.procs import NotUp, free_port, start_perch, stop, wait_http

EXPERIMENT = "home-hero"
ARMS = ["classic", "bold", "social-proof", "discount"]
DEVICES = {"desktop": 0.45, "mobile": 0.45, "tablet": 0.10}
SOURCES = {"search": 0.40, "social": 0.30, "direct": 0.30}
USER_AGENTS = {
    "desktop": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124 Safari/537.36",
    "mobile": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "tablet": "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15",
}
REFERERS = {"search": "https://www.google.com/search?q=shoes", "social": "https://t.co/x1y2", "direct": None}
# Hidden truth: conversion rate by device and arm, scaled by traffic source. The best
# arm differs by segment, so no single variant is right for everyone.
BASE = {
    "desktop": {"classic": 0.040, "bold": 0.062, "social-proof": 0.045, "discount": 0.048},
    "mobile": {"classic": 0.030, "bold": 0.034, "social-proof": 0.041, "discount": 0.058},
    "tablet": {"classic": 0.050, "bold": 0.038, "social-proof": 0.061, "discount": 0.044},
}
SOURCE_LIFT = {
    "search": {"classic": 1.15, "bold": 1.0, "social-proof": 0.9, "discount": 1.0},
    "social": {"classic": 0.85, "bold": 1.0, "social-proof": 1.35, "discount": 1.0},
    "direct": {"classic": 1.0, "bold": 1.0, "social-proof": 1.0, "discount": 1.0},
}
CONSENT_WITHHELD = 0.08
RETURNING = 0.20


def true_rate(device: str, source: str, arm: str) -> float:
    return BASE[device][arm] * SOURCE_LIFT[source][arm]


def oracle_arm(device: str, source: str) -> str:
    return max(ARMS, key=lambda a: true_rate(device, source, a))


@dataclass
class Visit:
    index: int
    visitor: int
    device: str
    source: str
    consent: bool
    u: float  # the visit's conversion draw, shared by Perch, uniform and oracle
    uniform_arm: str


@dataclass
class Outcome:
    arm: str | None = None
    reason: str = ""
    converted: bool = False
    expected: float = 0.0  # the true rate of what was shown
    decide_ms: float | None = None
    wall_ms: float = 0.0
    error: str | None = None


@dataclass
class Run:
    visits: list[Visit]
    outcomes: list[Outcome] = field(default_factory=list)


def population(count: int, seed: int) -> list[Visit]:
    rng = random.Random(seed)
    visits: list[Visit] = []
    visitors: list[tuple[str, str, bool]] = []
    for i in range(count):
        if visitors and rng.random() < RETURNING:
            visitor = rng.randrange(len(visitors))
        else:
            device = rng.choices(list(DEVICES), list(DEVICES.values()))[0]
            source = rng.choices(list(SOURCES), list(SOURCES.values()))[0]
            visitors.append((device, source, rng.random() >= CONSENT_WITHHELD))
            visitor = len(visitors) - 1
        device, source, consent = visitors[visitor]
        visits.append(Visit(i, visitor, device, source, consent, rng.random(), rng.choice(ARMS)))
    return visits


def _wait_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        wait_http(url, proc, timeout_s=60, log=log)
    except NotUp as exc:
        raise click.ClickException(str(exc)) from None


def experiment_spec() -> dict[str, Any]:
    return {
        "key": EXPERIMENT,
        "default_arm": "classic",
        "features": ["device", "source"],
        "holdout": 0.1,
        "floor": 0.05,
        "prior": {"alpha": 1, "beta": 20, "shrinkage": 30},
        "max_age_s": 3600,
        "arms": [
            {
                "key": arm,
                "html": f"<section class='hero hero-{arm}'>{arm}</section>",
                "payload": {"variant": arm},
            }
            for arm in ARMS
        ],
    }


class _Simulator:
    """Visitors as browsers would be: their own cookie, consent, referer and device."""

    def __init__(self, edge_url: str, visits: list[Visit], rate: float) -> None:
        self.edge_url = edge_url
        self.rate = rate
        self.started = time.monotonic()
        self.outcomes = [Outcome() for _ in visits]
        self.cookies: dict[int, str] = {}
        self.queue: asyncio.Queue[Visit] = asyncio.Queue()
        for visit in visits:
            self.queue.put_nowait(visit)

    def headers(self, visit: Visit) -> dict[str, str]:
        headers = {"user-agent": USER_AGENTS[visit.device]}
        referer = REFERERS[visit.source]
        if referer:
            headers["referer"] = referer
        if not visit.consent:
            headers["sec-gpc"] = "1"
        elif visit.visitor in self.cookies:
            headers["cookie"] = f"perch_uid={self.cookies[visit.visitor]}"
        return headers

    async def visit(self, session: Any, visit: Visit) -> None:
        out = self.outcomes[visit.index]
        headers = self.headers(visit)
        started = time.perf_counter()
        url = f"{self.edge_url}/v1/decide"
        async with session.get(url, params={"experiment": EXPERIMENT}, headers=headers) as r:
            body = await r.json()
            out.wall_ms = (time.perf_counter() - started) * 1000
            if r.status != 200:
                out.error = f"decide: HTTP {r.status}"
                return
            timing = r.headers.get("server-timing", "")
            if "perch_uid" in r.cookies:
                self.cookies[visit.visitor] = r.cookies["perch_uid"].value
        if timing.startswith("perch;dur="):
            out.decide_ms = float(timing.split("=", 1)[1])
        decision = body["decisions"][0]
        out.arm, out.reason = decision["arm"] or "classic", decision["reason"]  # fallback: the page's own
        out.expected = true_rate(visit.device, visit.source, out.arm)
        out.converted = visit.u < out.expected
        if out.converted:
            beacon = {"token": decision["token"], "value": 1}  # the decision's signed token
            async with session.post(
                f"{self.edge_url}/v1/events", headers=self.headers(visit), json=beacon
            ) as b:
                await b.read()
                if b.status != 202:
                    out.error = f"beacon: HTTP {b.status}"

    async def worker(self, session: Any, progress: Any) -> None:
        import aiohttp

        while not self.queue.empty():
            visit = self.queue.get_nowait()
            # Visitors arrive at ``rate`` a second, not as fast as two cores can send them.
            wait = self.started + visit.index / self.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self.visit(session, visit)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.outcomes[visit.index].error = f"{type(exc).__name__}: {exc}"
            progress.update(1)


async def _simulate(
    edge_url: str, visits: list[Visit], concurrency: int, rate: float, progress: Any
) -> list[Outcome]:
    # aiohttp rather than httpx here: at thousands of requests a second on two shared
    # cores the client's own overhead decides how fast the demo runs.
    import aiohttp

    simulator = _Simulator(edge_url, visits, rate)
    connector = aiohttp.TCPConnector(limit=concurrency)
    # Cookies are kept per simulated visitor, not in one shared jar.
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        await asyncio.gather(*(simulator.worker(session, progress) for _ in range(concurrency)))
    return simulator.outcomes


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))] if ordered else float("nan")


def summarize(visits: list[Visit], outcomes: list[Outcome]) -> dict[str, Any]:
    perch_expected = sum(o.expected for o in outcomes)
    uniform_expected = sum(true_rate(v.device, v.source, v.uniform_arm) for v in visits)
    oracle_expected = sum(true_rate(v.device, v.source, oracle_arm(v.device, v.source)) for v in visits)
    realized = {
        "perch": sum(o.converted for o in outcomes),
        "uniform": sum(v.u < true_rate(v.device, v.source, v.uniform_arm) for v in visits),
        "oracle": sum(v.u < true_rate(v.device, v.source, oracle_arm(v.device, v.source)) for v in visits),
    }
    gap = oracle_expected - uniform_expected
    # Holdout and no-consent visitors get the default by design: how much of the possible lift
    # did Perch capture where it was allowed to choose?
    chosen = [(v, o) for v, o in zip(visits, outcomes, strict=True) if o.reason == "personalized"]
    chosen_gap = sum(
        true_rate(v.device, v.source, oracle_arm(v.device, v.source))
        - true_rate(v.device, v.source, v.uniform_arm)
        for v, _ in chosen
    )
    chosen_gain = sum(o.expected - true_rate(v.device, v.source, v.uniform_arm) for v, o in chosen)
    timings = [o.decide_ms for o in outcomes if o.decide_ms is not None]
    return {
        "visits": len(visits),
        "errors": sum(o.error is not None for o in outcomes),
        "conversions": realized,
        "expected_conversions": {
            "perch": perch_expected,
            "uniform": uniform_expected,
            "oracle": oracle_expected,
        },
        "regret": {"perch": oracle_expected - perch_expected, "uniform": gap},
        "lift_captured": (perch_expected - uniform_expected) / gap if gap > 0 else None,
        "lift_captured_personalized": chosen_gain / chosen_gap if chosen_gap > 0 else None,
        "reasons": {r: sum(o.reason == r for o in outcomes) for r in sorted({o.reason for o in outcomes})},
        "server_timing_ms": {"p50": _percentile(timings, 0.5), "p99": _percentile(timings, 0.99)},
        "wall_ms": {
            "p50": _percentile([o.wall_ms for o in outcomes], 0.5),
            "p99": _percentile([o.wall_ms for o in outcomes], 0.99),
        },
    }


def regret_series(
    visits: list[Visit], outcomes: list[Outcome], points: int = 100
) -> dict[str, list[tuple[float, float]]]:
    step = max(1, len(visits) // points)
    perch = uniform = 0.0
    out: dict[str, list[tuple[float, float]]] = {"Perch": [], "uniform A/B": []}
    for i, (v, o) in enumerate(zip(visits, outcomes, strict=True), start=1):
        best = true_rate(v.device, v.source, oracle_arm(v.device, v.source))
        perch += best - o.expected
        uniform += best - true_rate(v.device, v.source, v.uniform_arm)
        if i % step == 0 or i == len(visits):
            out["Perch"].append((i, perch))
            out["uniform A/B"].append((i, uniform))
    return out


def _launch(
    procs: list[subprocess.Popen[bytes]], data_dir: Path, env: dict[str, str], cp_port: int, edge_port: int
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


def _write_files(
    data_dir: Path, visits: list[Visit], outcomes: list[Outcome], summary: dict[str, Any]
) -> dict[str, Path]:
    from control_plane.http.charts import line_chart

    chart = data_dir / "regret.svg"
    title = "Cumulative expected regret vs the oracle"
    chart.write_text(line_chart(regret_series(visits, outcomes), title, "conversions lost"))
    (data_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"regret plot": chart, "summary": data_dir / "summary.json"}


def _print_report(
    summary: dict[str, Any], report: dict[str, Any] | None, files: dict[str, Path], elapsed_s: float
) -> None:
    conv, exp = summary["conversions"], summary["expected_conversions"]
    click.echo("")
    click.secho(f"Perch demo: {summary['visits']:,} visits in {elapsed_s:.0f} s", bold=True)
    click.echo(f"  decisions by reason: {summary['reasons']}")
    click.echo("")
    click.echo(f"  {'policy':<14}{'conversions':>12}{'expected':>10}{'rate':>8}{'regret':>9}")
    for name, label in (("oracle", "oracle"), ("perch", "Perch"), ("uniform", "uniform A/B")):
        regret = exp["oracle"] - exp[name]
        rate = exp[name] / summary["visits"]
        click.echo(f"  {label:<14}{conv[name]:>12,}{exp[name]:>10.0f}{rate:>8.2%}{regret:>9.0f}")
    captured = summary["lift_captured"]
    if captured is not None:
        click.echo(
            f"  Perch captured {captured:.0%} of the oracle's lift over a uniform split "
            f"(expected conversions, same visitors and draws)"
        )
    personal = summary["lift_captured_personalized"]
    if personal is not None:
        click.echo(
            f"  ... and {personal:.0%} on the visits it personalized (holdout and no-consent visitors "
            f"get the default by design)"
        )
    timing, wall = summary["server_timing_ms"], summary["wall_ms"]
    click.echo(
        f"  edge decision time (Server-Timing): p50 {timing['p50']:.3f} ms, p99 {timing['p99']:.3f} ms; "
        f"HTTP round trip p50 {wall['p50']:.1f} ms, p99 {wall['p99']:.1f} ms"
    )
    if report is not None:
        h = report["holdout"]
        if h["lift"] is not None and h["lift_ci"]:
            lo, hi = h["lift_ci"]
            click.echo(
                f"  holdout lift (control plane report): {h['lift'] * 100:+.2f} pp conversion rate, "
                f"95% CI [{lo * 100:+.2f}, {hi * 100:+.2f}] pp "
                f"({h['personalized']['exposures']:,} personalized vs {h['holdout']['exposures']:,} held out)"
            )
        if report.get("alerts"):
            click.secho(f"  alerts: {[a['message'] for a in report['alerts'][:3]]}", fg="yellow")
    for name, path in files.items():
        click.echo(f"  {name}: {path}")
    if summary["errors"]:
        click.secho(f"  {summary['errors']} visits failed", fg="red")


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
def demo(
    *, visitors: int, concurrency: int, rate: float, seed: int, data_dir: Path, exit_after: bool
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

    try:
        click.echo(f"control plane {cp_url}, edge {edge_url}, data in {data_dir}")
        _launch(procs, data_dir, env, cp_port, edge_port)
        admin = httpx.Client(base_url=cp_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        created = admin.post("/v1/experiments", json=experiment_spec())
        if created.status_code != 201:
            raise click.ClickException(f"creating the experiment failed: {created.text}")
        admin.post(f"/v1/experiments/{EXPERIMENT}/publish").raise_for_status()

        visits = population(visitors, seed)
        with click.progressbar(
            length=len(visits), label="visitors through the edge", show_pos=True, show_eta=True
        ) as bar:
            outcomes = asyncio.run(_simulate(edge_url, visits, concurrency, rate, bar))
        time.sleep(1.0)  # the edge's last batch and beacons
        _drained(data_dir)
        admin.post(f"/v1/experiments/{EXPERIMENT}/publish").raise_for_status()
        report_response = admin.get(f"/v1/experiments/{EXPERIMENT}/report")
        report = report_response.json() if report_response.status_code == 200 else None

        summary = summarize(visits, outcomes)
        files = _write_files(data_dir, visits, outcomes, summary)
        _print_report(summary, report, files, time.monotonic() - started)
        failed = summary["errors"] > 0 or report is None
        click.echo("")
        click.secho(f"Dashboard: {cp_url}/  (log in with the admin token {token})", bold=True)
        if failed:
            raise click.ClickException("the demo saw failures (see above)")
        if exit_after:
            return
        click.echo("The control plane and the edge keep running; press Ctrl-C to stop them.")
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        raise click.ClickException("a server stopped unexpectedly; see the logs in " + str(data_dir))
    except KeyboardInterrupt:
        click.echo("\nstopping")
    finally:
        stop(*procs, timeout_s=10)
