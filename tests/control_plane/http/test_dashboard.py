"""The dashboard: login, sessions and pages over HTTP (ASGI), then the real thing in headless Chromium."""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from control_plane.distribution.kv_publishers import LocalKVPublisher
from control_plane.experiments import ExperimentSpec
from control_plane.http.app import create_app
from control_plane.http.dashboard import SESSION_COOKIE, SESSION_TTL_S, dashboard_routes, experiment_page
from control_plane.learning.report_types import (
    OPE,
    Alert,
    AllocationPoint,
    ArmRow,
    Decomposition,
    Effect,
    FeatureEffect,
    Group,
    Outcomes,
    Report,
    SegmentRow,
    SnapshotRow,
)
from control_plane.settings import Settings
from control_plane.storage.store import ExperimentRecord, Store
from core import LocalKV, encode_batch, sign
from tests.control_plane.http.test_app import HERO, SECRET, TOKEN, Clock
from tests.control_plane.learning.test_report import populated
from tests.control_plane.storage.test_snapshots import bulky_columns_read, statements
from tests.factories import UNIT_KEY, exposure, outcome

SVG = "{http://www.w3.org/2000/svg}"
EVIL = '<img src=x onerror="alert(1)">&'
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def report_for(record: ExperimentRecord, now_ms: int) -> Report:
    """A hand-written report, with visitor-controlled text to escape."""

    def arm(name: str, n: int, conversions: int, low: float, high: float, p_best: float) -> ArmRow:
        rate = conversions / n
        return ArmRow(name, n, conversions, float(conversions), rate, rate, low, high, p_best, 0.5)

    arms = (arm("a", 400, 20, 0.031, 0.074, 0.08), arm("b", 500, 45, 0.066, 0.117, 0.92))
    mobile = Decomposition(
        Group(540, 45.0, 45 / 540), Group(60, 3.0, 0.05), 45 / 540 - 0.05, (-0.03, 0.09), None
    )
    other = Decomposition(Group(360, 20.0, 20 / 360), Group(40, 0.0, 0.0), None, None, None)
    return Report(
        experiment=record.spec.key,
        version=record.version,
        generated_ms=now_ms,
        reward_kind="binary",
        model="segments",
        feature_effects=(
            FeatureEffect("device=mobile", {"a": Effect(-0.2, -0.5, 0.1), "b": Effect(0.05, -0.1, 0.2)}),
            FeatureEffect(f"device={EVIL}", {"a": Effect(0.31, 0.0, 0.62)}),
        ),
        arms=arms,
        holdout=Decomposition(
            Group(900, 65.0, 65 / 900),
            Group(100, 5.0, 0.05),
            65 / 900 - 0.05,
            (-0.02, 0.064),
            (65 / 900 - 0.05) / 0.05,
        ),
        segments=(
            SegmentRow("device:mobile", {"device": "mobile"}, 600, mobile, arms),
            SegmentRow("seg-0123456789abcdef", {"device": EVIL}, 400, other, ()),
        ),
        snapshots=(SnapshotRow(2, now_ms - 60_000, 812), SnapshotRow(1, now_ms - 120_000, 790)),
        allocation_history=(
            AllocationPoint(1, now_ms - 120_000, {"a": 0.5, "b": 0.5}),
            AllocationPoint(2, now_ms - 60_000, {"a": 0.3, "b": 0.7}),
        ),
        outcomes=Outcomes(joined=65, late=2, pending=1, extra=0),
        counters={"updates": 7},
        alerts=(Alert(now_ms - 5000, "guardrail", f"arm b {EVIL}", None),),
        ope=None,
    )


class Browserish:
    """A synchronous client over the ASGI app that keeps cookies, like a browser, and every response."""

    def __init__(self, app: Starlette, base_url: str = "http://control-plane") -> None:
        self.app, self.base_url = app, base_url
        self.cookies = httpx.Cookies()
        self.seen: list[httpx.Response] = []

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(
                transport=transport, base_url=self.base_url, cookies=self.cookies
            ) as client:
                response = await client.request(method, path, **kwargs)
                self.cookies = httpx.Cookies(client.cookies)
                return response

        response = asyncio.run(go())
        self.seen.append(response)
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def login(self, token: str = TOKEN, **kwargs: Any) -> httpx.Response:
        return self.post("/login", data={"token": token}, **kwargs)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    # The dashboard only reads through Store and build_report, which test_store and
    # test_report cover on both databases; SQLite is enough here.
    store = Store.from_url(f"sqlite:///{tmp_path / 'perch.db'}", UNIT_KEY)
    store.migrate()
    yield store
    store.engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def compose(store: Store, settings: Settings, clock: Clock, **dashboard: Any) -> Starlette:
    """The app, with the dashboard's routes built on this test's clock (and report) in front."""
    app = create_app(
        settings, store, LocalKVPublisher(LocalKV(settings.data_dir)), now_ms=clock, schedule=False
    )
    app.router.routes[0:0] = dashboard_routes(store, settings, clock, **dashboard)
    return app


@pytest.fixture
def browser(sqlite_store: Store, tmp_path: Path, clock: Clock) -> Browserish:
    settings = Settings(admin_token=TOKEN, edge_secret=SECRET, data_dir=tmp_path)
    app = compose(sqlite_store, settings, clock, report=lambda _, record, now: report_for(record, now))
    client = Browserish(app)
    assert client.post("/v1/experiments", json=HERO, headers=AUTH).status_code == 201
    return client


def svgs(html: str) -> dict[str, ET.Element]:
    """Every inline chart of a page, parsed as XML, by its data-chart."""
    found = [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", html, flags=re.S)]
    return {svg.get("data-chart", ""): svg for svg in found}


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


def tags(html: str) -> set[str]:
    parser = Tags()
    parser.feed(html)
    return set(parser.tags)


def test_logged_out_the_root_is_a_login_form(browser: Browserish) -> None:
    r = browser.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/login">' in r.text
    assert 'type="password"' in r.text and 'name="token"' in r.text
    assert "hero" not in r.text  # nothing about experiments before logging in
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe-inline" not in csp
    assert r.headers["cache-control"] == "no-store" and r.headers["x-frame-options"] == "DENY"


def test_login_sets_a_signed_http_only_strict_cookie(browser: Browserish) -> None:
    r = browser.login()
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
    assert f"max-age={SESSION_TTL_S}" in cookie.lower()
    assert "secure" not in attributes  # plain http here; over https it is Secure
    value = browser.cookies[SESSION_COOKIE]
    assert TOKEN not in value and re.fullmatch(r"v1\.\d+\.[0-9a-f]{32}\.[0-9a-f]{64}", value)

    page = browser.get("/")
    assert page.status_code == 200 and 'href="/experiments/hero"' in page.text
    row = re.search(r"<tr><td><a href=\"/experiments/hero\">hero</a></td>(.*?)</tr>", page.text)
    assert row is not None and "<td class=num>1</td><td>a, b</td>" in row.group(1)
    assert "never published" in row.group(1)


def test_login_over_https_makes_the_cookie_secure(sqlite_store: Store, tmp_path: Path, clock: Clock) -> None:
    settings = Settings(admin_token=TOKEN, edge_secret=SECRET, data_dir=tmp_path)
    client = Browserish(compose(sqlite_store, settings, clock), base_url="https://control-plane")
    r = client.login()
    assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()


def test_a_wrong_token_is_a_401_with_the_form_again(browser: Browserish) -> None:
    for wrong in ["wrong-token-000000000", "", TOKEN[:-1], TOKEN + "x", "é" * 20]:
        r = browser.login(wrong)
        assert r.status_code == 401, wrong
        assert "not the admin token" in r.text and 'action="/login"' in r.text
        assert "set-cookie" not in r.headers
        if wrong:
            assert wrong not in r.text  # the form does not echo what was typed
    assert browser.post("/login", content=b"nothing").status_code == 401
    assert browser.post("/login", data={"token": "x" * 5000}).status_code == 413
    assert SESSION_COOKIE not in browser.cookies


def test_pages_need_a_valid_session(browser: Browserish, clock: Clock) -> None:
    assert browser.get("/experiments/hero").status_code == 303
    assert browser.get("/experiments/hero").headers["location"] == "/"
    assert browser.get("/experiments/nope").status_code == 303  # no telling what exists

    browser.login()
    good = browser.cookies[SESSION_COOKIE]
    payload, _, mac = good.rpartition(".")
    _, expires, nonce = payload.split(".")
    other = Settings(admin_token="another-admin-token-0000", edge_secret=SECRET)
    forged_by_other_token = dashboard_cookie(other, clock.ms)
    stranger = Browserish(browser.app)
    for bad in [
        f"{payload}.{'0' * 64}",
        f"v1.{int(expires) + 10}.{nonce}.{mac}",  # a longer life, same signature
        forged_by_other_token,
        "v1.99999999999.x.y",
        good.replace("v1", "v2", 1),
        "é" * 10,
        "",
    ]:
        cookie = {"cookie": f"{SESSION_COOKIE}={bad}".encode()}  # bytes: a client may send anything
        assert stranger.get("/experiments/hero", headers=cookie).status_code == 303, bad
        assert 'action="/login"' in stranger.get("/", headers=cookie).text

    assert (
        stranger.get("/experiments/hero", headers={"cookie": f"{SESSION_COOKIE}={good}"}).status_code == 200
    )
    assert browser.get("/experiments/hero").status_code == 200
    clock.ms += SESSION_TTL_S * 1000  # sessions expire on their own
    assert browser.get("/experiments/hero").status_code == 303


def dashboard_cookie(settings: Settings, now_ms: int) -> str:
    from control_plane.http.dashboard import new_session

    return new_session(settings, now_ms)


def test_rotating_the_admin_token_ends_every_session(
    sqlite_store: Store, tmp_path: Path, clock: Clock
) -> None:
    settings = Settings(admin_token=TOKEN, edge_secret=SECRET, data_dir=tmp_path)
    client = Browserish(compose(sqlite_store, settings, clock))
    client.login()
    assert "Log out" in client.get("/").text
    rotated = Settings(admin_token="a-new-admin-token-000000", edge_secret=SECRET, data_dir=tmp_path)
    client.app = compose(sqlite_store, rotated, clock)
    assert 'action="/login"' in client.get("/").text


def test_cross_site_posts_are_refused(browser: Browserish) -> None:
    for headers in [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://control-plane.evil.example"},
        {"Referer": "https://evil.example/page"},
    ]:
        r = browser.login(headers=headers)
        assert r.status_code == 403, headers
        assert "set-cookie" not in r.headers
    assert browser.login(headers={"Origin": "http://control-plane"}).status_code == 303
    assert browser.post("/logout", headers={"Origin": "https://evil.example"}).status_code == 403
    assert SESSION_COOKIE in browser.cookies
    assert browser.login(headers={"Referer": "http://control-plane/"}).status_code == 303


def test_the_experiment_page_shows_the_report(browser: Browserish, sqlite_store: Store) -> None:
    browser.login()
    r = browser.get("/experiments/hero")
    assert r.status_code == 200
    page = r.text
    assert 'href="/v1/experiments/hero/report"' in page
    charts = svgs(page)
    assert set(charts) == {"allocation", "conversion", "lift"}
    for svg in charts.values():
        assert svg.get("data-empty") == "false" and svg.find(f"{SVG}title") is not None
    areas = {m.get("data-arm"): m.get("data-values") for m in charts["allocation"].iter(f"{SVG}path")}
    assert areas == {"a": "0.5,0.3", "b": "0.5,0.7"}
    bars = {
        m.get("data-arm"): float(m.get("data-value", "nan"))
        for m in charts["conversion"].iter(f"{SVG}rect")
        if m.get("class") == "mark bar"
    }
    assert bars == {"a": pytest.approx(0.05), "b": pytest.approx(0.09)}
    groups = {m.get("data-group") for m in charts["lift"].iter() if "mark" in (m.get("class") or "").split()}
    assert groups == {"personalized", "holdout", "lift"}

    segments = re.search(r'<table class="segments">.*?</table>', page, flags=re.S)
    assert segments is not None
    rows = re.findall(r"<tr><td>(.*?)</td>", segments.group(0))
    assert rows == ["device:mobile", "seg-0123456789abcdef"]
    assert "b (P(best) 0.92)" in segments.group(0) and "+3.33 pp [-3.00 pp, +9.00 pp]" in segments.group(0)

    # The alert is prominent, and visitor-controlled text is text, never markup.
    assert '<section class="alerts" role="alert"><h2>1 alert</h2>' in page
    assert EVIL not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;" in page
    assert "img" not in tags(page) and "script" not in tags(page)
    snapshots = re.search(r'<table class="snapshots">.*?</table>', page, flags=re.S)
    assert snapshots is not None and len(re.findall(r"<tr><td", snapshots.group(0))) == 2
    effects = re.search(r'<table class="effects">.*?</table>', page, flags=re.S)
    assert effects is not None
    cells = re.findall(r"<td(?: class=num)?>(.*?)</td>", effects.group(0))
    assert cells[:3] == ["device=mobile", "-0.20 [-0.50, +0.10]", "+0.05 [-0.10, +0.20]"]
    assert cells[4:] == ["+0.31 [+0.00, +0.62]", "—"]  # an arm a row does not have


def held_back(now_ms: int) -> OPE:
    """A promotion-gate evaluation as publish records a held-back snapshot."""
    result = {"ips": 0.1, "snips": 0.12, "dr": 0.11, "ess": 50.0, "n": 100, "ips_se": 0.01, "dr_se": 0.009}
    evaluation = {
        "candidate": result,
        "current": {**result, "ips": 0.14, "snips": 0.15, "dr": None},
        "difference": -0.03,
        "difference_se": 0.004,
        "current_version": 1,
        "tolerance": 0.005,
        "exposures": 100,
        "passed": False,
    }
    return OPE(now_ms - 1000, "alert", "promotion_blocked", f"held back {EVIL}", None, False, evaluation)


def ope_cells(page: str) -> list[list[str]]:
    section = re.search(r'<section id="ope">.*?</section>', page, flags=re.S)
    assert section is not None and "<pre>" not in section.group(0)
    table = re.search(r'<table class="ope">.*?</table>', section.group(0), flags=re.S)
    assert table is not None
    head = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", table.group(0))
    assert head == ["estimator", "candidate", "current", "SE", "ESS", "verdict"]
    body = re.findall(r"<tr>(<td.*?)</tr>", table.group(0))
    return [re.findall(r"<td(?: class=num)?>(.*?)</td>", row) for row in body]


def test_the_off_policy_panel_is_a_table(sqlite_store: Store, tmp_path: Path, clock: Clock) -> None:
    settings = Settings(admin_token=TOKEN, edge_secret=SECRET, data_dir=tmp_path)
    report = lambda _, record, now: replace(report_for(record, now), ope=held_back(now))  # noqa: E731
    client = Browserish(compose(sqlite_store, settings, clock, report=report))
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    client.login()
    page = client.get("/experiments/hero").text
    verdict = "held back: difference -0.0300 ± 0.0040, tolerance 0.005"
    assert ope_cells(page) == [
        ["IPS", "0.1000", "0.1400", "0.0100", "50.0 of 100", "—"],
        ["SNIPS", "0.1200", "0.1500", "0.0040", "50.0 of 100", verdict],
        ["DR", "0.1100", "—", "0.0090", "50.0 of 100", "—"],  # the current snapshot had no model
    ]
    assert (
        "A held-back snapshot (promotion_blocked), evaluated at" in page and "on 100 logged exposures" in page
    )
    assert EVIL not in page and "held back &lt;img" in page

    # An evaluation recorded without the paired difference (as publish once stored them).
    ope = held_back(clock.ms)
    older = {k: v for k, v in ope.evaluation.items() if k not in ("difference", "difference_se")}
    record = sqlite_store.get_experiment("hero")
    assert record is not None
    report = replace(report_for(record, clock.ms), ope=replace(ope, evaluation=older))
    assert ope_cells(experiment_page(record, report, 0))[1][3:] == [
        "—",
        "50.0 of 100",
        "held back, tolerance 0.005",
    ]


def test_the_page_of_a_real_populated_report(store: Store, tmp_path: Path) -> None:
    # build_report's records as they come, gate evaluation and feature effects included.
    for key, report in populated(store, tmp_path, typed=True).items():
        record = store.get_experiment(key)
        assert record is not None and report.ope is not None
        page = experiment_page(record, report, report.generated_ms)
        (ips, snips, dr) = ope_cells(page)
        gate = report.ope.evaluation
        assert snips[:3] == ["SNIPS", f"{gate['candidate']['snips']:.4f}", f"{gate['current']['snips']:.4f}"]
        assert ips[4] == snips[4] == dr[4] == f"{gate['candidate']['ess']:.1f} of {gate['candidate']['n']}"
        difference, se = gate["difference"], gate["difference_se"]
        assert snips[3] == f"{se:.4f}" and ips[3] == f"{gate['candidate']['ips_se']:.4f}"
        assert snips[5] == f"passed: difference {difference:+.4f} ± {se:.4f}, tolerance 1"
        assert "Published snapshot 2, evaluated at" in page
        effects = re.search(r'<table class="effects">.*?</table>', page, flags=re.S)
        assert (effects is not None) == (key == "ctx")
        assert svgs(page)["conversion"].get("data-empty") == "false"


def test_the_real_report_renders_too(sqlite_store: Store, tmp_path: Path, clock: Clock) -> None:
    # Without data: every chart says so instead of drawing empty axes.
    settings = Settings(admin_token=TOKEN, edge_secret=SECRET, data_dir=tmp_path)
    client = Browserish(compose(sqlite_store, settings, clock))
    client.post("/v1/experiments", json=HERO, headers=AUTH)
    client.login()
    page = client.get("/experiments/hero").text
    assert {name: svg.get("data-empty") for name, svg in svgs(page).items()} == {
        "allocation": "true",
        "conversion": "true",
        "lift": "true",
    }
    assert "no data yet" in page and "Never published." in page


def test_unknown_and_archived_experiments_are_404(browser: Browserish) -> None:
    browser.login()
    r = browser.get("/experiments/%3Cb%3E%22x%26")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "&lt;b&gt;&quot;x&amp;" in r.text and "<b>" not in r.text
    browser.request("DELETE", "/v1/experiments/hero", headers=AUTH)
    assert browser.get("/experiments/hero").status_code == 404
    assert 'href="/experiments/hero"' not in browser.get("/").text


def test_the_list_shows_snapshots_and_alerts(browser: Browserish, sqlite_store: Store, clock: Clock) -> None:
    assert browser.post("/v1/experiments/hero/publish", headers=AUTH).status_code == 200
    sqlite_store.add_alert("hero", clock.ms, "guardrail", "something")
    clock.ms += 90_000
    browser.login()
    row = re.search(r'<a href="/experiments/hero">hero</a>.*?</tr>', browser.get("/").text)
    assert row is not None
    assert "<td class=num>1</td><td>90 s</td>" in row.group(0)  # snapshot version and age
    assert '<span class="badge bad">1</span>' in row.group(0)
    clock.ms += 7 * 3600 * 1000  # beyond max_age_s: the edge is serving the default arm
    assert "stale" in browser.get("/").text


def test_the_list_reads_no_snapshot_bytes_or_summary(
    browser: Browserish, sqlite_store: Store, clock: Clock
) -> None:
    # A summary grows with segments x arms (megabytes); the list shows a version and an age.
    assert browser.post("/v1/experiments/hero/publish", headers=AUTH).status_code == 200
    browser.login()
    with statements(sqlite_store.engine) as seen:
        assert '<a href="/experiments/hero">hero</a>' in browser.get("/").text
    assert bulky_columns_read(seen) == []


def test_logout_drops_the_session(browser: Browserish) -> None:
    browser.login()
    assert "Log out" in browser.get("/").text
    copied = browser.cookies[SESSION_COOKIE]
    r = browser.post("/logout")
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert SESSION_COOKIE in r.headers["set-cookie"] and "max-age=0" in r.headers["set-cookie"].lower()
    assert SESSION_COOKIE not in browser.cookies
    assert 'action="/login"' in browser.get("/").text
    assert browser.get("/experiments/hero").status_code == 303
    # A copy of the cookie (another tab, a stolen one) no longer works either.
    stolen = browser.get("/experiments/hero", headers={"cookie": f"{SESSION_COOKIE}={copied}"})
    assert stolen.status_code == 303


def test_the_token_never_appears_in_a_url_or_a_page(browser: Browserish) -> None:
    browser.get("/")
    browser.login("a-wrong-guess-0000000")
    browser.login()
    browser.get("/")
    browser.get("/experiments/hero")
    browser.get("/experiments/nope")
    browser.post("/logout")
    browser.get("/experiments/hero")
    for r in browser.seen:
        if r.request.url.path.startswith("/v1/"):
            continue  # the API's own calls (with the bearer header) in the fixture
        assert TOKEN not in str(r.request.url)
        assert TOKEN not in r.text
        assert all(TOKEN not in value for value in r.headers.values())
    assert all(r.request.method == "POST" for r in browser.seen if r.request.url.path == "/login")


# --- in a real browser -----------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PNG = b"\x89PNG\r\n\x1a\n"


def require_browser() -> None:
    """Chromium and Playwright, or a skip on a developer's machine and a failure in CI."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install playwright)")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class Server:
    """uvicorn in a thread, on a socket bound before it starts (no port race)."""

    def __init__(self, app: Starlette) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, ws="none", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.socket.close()


# Conversion rates by (device, arm): mobile favours c, desktop b; the holdout sees arm a.
RATES = {("mobile", "a"): 0.05, ("mobile", "b"): 0.08, ("mobile", "c"): 0.2}
RATES |= {("desktop", "a"): 0.05, ("desktop", "b"): 0.18, ("desktop", "c"): 0.06}


def traffic(rng: random.Random, start: int, count: int) -> list[dict[str, Any]]:
    """Exposures (10% holdout) and the outcomes of those that convert, stamped now."""
    now = int(time.time() * 1000)
    events: list[dict[str, Any]] = []
    for i in range(start, start + count):
        device = rng.choice(["mobile", "desktop"])
        holdout = rng.random() < 0.1
        arm = "a" if holdout else rng.choice(["a", "b", "c"])
        events.append(
            {
                **exposure(
                    i,
                    arm=arm,
                    reason="holdout" if holdout else "personalized",
                    ts=now,
                    context={"device": device},
                ),
                "segment": f"device:{device}",
            }
        )
        if rng.random() < RATES[device, arm]:
            events.append(outcome(i, ts=now + 1))
    return events


@pytest.mark.browser
def test_the_dashboard_in_headless_chromium(tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    store = Store.from_url(f"sqlite:///{tmp_path / 'perch.db'}", UNIT_KEY)
    store.migrate()
    settings = Settings(admin_token=TOKEN, edge_secret=SECRET, data_dir=tmp_path, learner_draws=10_000)
    app = create_app(settings, store, LocalKVPublisher(LocalKV(tmp_path)), schedule=False)
    experiment = {**HERO, "arms": [{"key": "a"}, {"key": "b"}, {"key": "c"}], "holdout": 0.1}
    rng = random.Random(7)
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as api:
        assert api.post("/v1/experiments", json=experiment, headers=AUTH).status_code == 201
        for round_no in range(3):
            body = encode_batch(traffic(rng, round_no * 1000, 800))
            r = api.post(
                "/v1/events",
                content=body,
                headers={"X-Perch-Signature": sign(SECRET, body, int(time.time()))},
            )
            assert r.status_code == 200, r.text
            assert api.post("/v1/experiments/hero/publish", headers=AUTH).status_code == 200

        with sync_playwright() as pw:
            chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                context = chromium.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                problems: list[str] = []
                requested: list[str] = []
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.on("request", lambda req: requested.append(req.url))

                page.goto(server.url + "/")
                page.fill("input[name=token]", TOKEN)
                page.click("form[action='/login'] button[type=submit]")
                expect(page.locator("table.experiments a", has_text="hero")).to_be_visible()
                assert page.url == server.url + "/"
                (cookie,) = context.cookies()
                assert cookie["name"] == SESSION_COOKIE and TOKEN not in cookie["value"]
                assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/"

                page.click("table.experiments a:text('hero')")
                page.wait_for_url(server.url + "/experiments/hero")
                for chart in ("allocation", "conversion", "lift"):
                    svg = page.locator(f'svg[data-chart="{chart}"]')
                    expect(svg).to_have_attribute("data-empty", "false")
                    box = svg.bounding_box()
                    assert box is not None and box["width"] > 300 and box["height"] > 150, chart
                for arm in ("a", "b", "c"):
                    for chart, mark in (("allocation", "path.mark.area"), ("conversion", "rect.mark.bar")):
                        marks = page.locator(f'svg[data-chart="{chart}"] {mark}[data-arm="{arm}"]')
                        assert marks.count() == 1, (chart, arm)
                        box = marks.bounding_box()
                        assert box is not None and box["width"] > 0 and box["height"] > 0, (chart, arm)
                    whisker = page.locator(f'svg[data-chart="conversion"] path.mark.ci[data-arm="{arm}"]')
                    assert float(whisker.get_attribute("data-high") or 0) > 0
                areas = page.locator('svg[data-chart="allocation"] path.mark.area')
                assert all(
                    len((v or "").split(",")) == 3
                    for v in areas.evaluate_all("els => els.map(e => e.getAttribute('data-values'))")
                )
                for group in ("personalized", "holdout"):
                    bar = page.locator(f'svg[data-chart="lift"] rect.mark.bar[data-group="{group}"]')
                    box = bar.bounding_box()
                    assert box is not None and box["width"] > 0 and box["height"] > 0, group
                expect(
                    page.locator('svg[data-chart="lift"] circle.mark.point[data-group="lift"]')
                ).to_have_count(1)
                assert page.locator("svg.perch-chart path").count() >= 7  # 3 areas, 4 whiskers
                assert page.locator("svg.perch-chart rect").count() > 5

                segment_rows = page.locator("table.segments tbody tr")
                assert segment_rows.count() == 2
                expect(page.locator("table.segments")).to_contain_text("device=mobile")
                expect(page.locator("table.snapshots tbody tr")).to_have_count(3)
                expect(page.locator("table.arms tbody tr")).to_have_count(3)

                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                data = shot.read_bytes()
                assert data.startswith(PNG) and len(data) > 20_000

                page.click("header button:text('Log out')")
                expect(page.locator("input[name=token]")).to_be_visible()
                assert context.cookies() == []
                page.goto(server.url + "/experiments/hero")
                assert page.url == server.url + "/"

                assert problems == []  # no CSP violation, no failed request, no script error
                assert requested and all(url.startswith(server.url + "/") for url in requested)
                assert all(TOKEN not in url for url in requested)
            finally:
                chromium.close()
    store.engine.dispose()


def test_the_experiment_page_shows_the_behavioural_clusters(browser: Browserish, sqlite_store: Store) -> None:
    from control_plane.events.ingest import ingest
    from control_plane.profiles.builder import ProfileSettings, build_cycle
    from core import signal_event, unit_tag
    from tests.factories import NOW

    groups = {"run": ("running-shoes", "socks"), "cook": ("pans", "recipes")}
    events: list[dict[str, Any]] = []
    for name, (first, second) in groups.items():
        for i in range(15):
            unit = f"{name}-{i}"
            tag = unit_tag(SECRET, unit)
            events += [
                signal_event(unit, tag, "page_view", NOW - k, category=first) for k in range(3 + i % 4)
            ]
            events += [
                signal_event(unit, tag, "page_view", NOW - 9 - k, category=second) for k in range(1 + i % 3)
            ]
    ingest(sqlite_store, events, None, NOW)
    build_cycle(sqlite_store, ProfileSettings(), NOW)
    build_cycle(sqlite_store, ProfileSettings(), NOW + 8 * 86_400_000)  # clusters fitted, profiles in them
    # Runners saw arm b and converted; cooks saw arm a and did not.
    seen = [exposure(100 + i, unit=f"run-{i}", arm="b") for i in range(4)]
    seen += [outcome(100 + i) for i in range(3)]
    seen += [exposure(200 + i, unit=f"cook-{i}", arm="a") for i in range(5)]
    ingest(sqlite_store, seen, None, NOW)

    browser.login()
    page = browser.get("/experiments/hero").text
    section = re.search(r'<table class="clusters">.*?</table>', page, flags=re.S)
    assert section is not None
    rows = {
        cells[2]: cells
        for cells in (
            re.findall(r"<td(?: class=num)?>(.*?)</td>", row)
            for row in re.findall(r"<tr><td.*?</tr>", section.group(0))
        )
    }
    run, cook = rows["running-shoes, socks"], rows["pans, recipes"]
    assert run[1] == cook[1] == "15"
    assert (run[3], run[4]) == ("—", "75.0% of 4") and (cook[3], cook[4]) == ("0.0% of 5", "—")


def test_a_ranked_experiment_shows_its_floors_and_position_bias(sqlite_store: Store) -> None:
    record = sqlite_store.create_experiment(
        ExperimentSpec.create(
            {
                "key": "recs",
                "arms": [{"key": "i0", "group": "g0"}, {"key": "i1", "group": "g1"}],
                "default_arm": "i0",
                "ranking": {"slots": 2, "min_exposures": 10},
            }
        ),
        0,
    )
    ranking = {
        "slots": 2,
        "diversity": 0.2,
        "quota": 1,
        "groups": {"i0": "g0", EVIL: "g1"},
        "floors": {
            "period_start_ms": 0,
            "period_end_ms": 86_400_000,
            "min_exposures": 10,
            "segments": ["all"],
            "requests_left": {"all": 3.0},
            "items": [
                {"item": "i0", "shown": 12, "least": 12, "met": True},
                {"item": EVIL, "shown": 4, "least": 4, "met": False},
            ],
        },
        "position_model": {
            "examination": [1.0, 0.6],
            "attractiveness": {"i0": 0.05},
            "shown": 16,
            "clicks": 3,
        },
    }
    page = experiment_page(record, replace(report_for(record, 0), ranking=ranking), 0)
    section = re.search(r'<section id="ranking">.*?</section>', page, flags=re.S)
    assert section is not None
    cells = [
        re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", section.group(0))
    ]
    assert ["i0", "g0", "12", "12", "met", "5.00%"] in cells
    assert any(row[2:5] == ["4", "4", "40%"] for row in cells)
    assert ["2", "0.60"] in cells
    assert EVIL not in page
    assert '<section id="ranking">' not in experiment_page(record, report_for(record, 0), 0)
