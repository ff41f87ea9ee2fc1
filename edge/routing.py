"""The edge's request handler: route, parse, call core, respond.

Runs unchanged under workerd, Pyodide in Node and CPython; the runtime is
reached only through :class:`edge.platform.Platform`.  Routes:

* ``GET|POST /v1/decide`` — decisions as JSON;
* ``POST /v1/events`` — outcome beacons, validated and forwarded home;
* ``POST /v1/signals`` — behavioural signals from ``/v1/perch.js`` (core.signals), forwarded home;
* ``GET /v1/perch.js`` — that script (edge.script);
* ``GET /v1/health`` — what this isolate holds;
* any other request — the origin's, its page's slots filled (:mod:`edge.pages`).

Personalization never fails a page: without a usable snapshot a slot keeps
the origin's own content and a decision says ``fallback`` and why.
"""

from __future__ import annotations

import logging

from core import (
    KEY_RE,
    EventError,
    Generator,
    JSONInputError,
    SignalError,
    parse_beacon,
    parse_json,
    parse_signals,
    unit_tag,
)
from edge.config import Var
from edge.context import ContextError, build_context
from edge.identity import known_units, parse_cookies
from edge.pages import page_route, passthrough
from edge.platform import EdgeRequest, EdgeResponse, Platform
from edge.script import SCRIPT
from edge.session import SESSION_COOKIE, advance, read_session, session_cookie
from edge.visit import Edge, Visit

__all__ = ["MAX_BODY_BYTES", "handle"]

log = logging.getLogger("perch.edge")

MAX_BODY_BYTES = 64 * 1024


def _experiments(raw: object, limit: int) -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise ValueError('name at least one experiment: ?experiment=KEY or {"experiments": [KEY, ...]}')
    if len(raw) > limit:
        raise ValueError(f"{len(raw)} experiments, at most {limit} per request")
    for key in raw:
        if not isinstance(key, str) or not KEY_RE.fullmatch(key):
            raise ValueError(f"experiment {key!r}: keys are 1-128 of letters, digits and '_.:-'")
    return list(dict.fromkeys(raw))


async def _decide_route(edge: Edge, platform: Platform, request: EdgeRequest, rng: Generator) -> EdgeResponse:
    if request.method == "POST":
        if len(request.body) > MAX_BODY_BYTES:
            return EdgeResponse.error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            doc = parse_json(request.body or b"null")
        except JSONInputError as exc:
            return EdgeResponse.error(
                400, f'body must be JSON {{"experiments": [...], "context": {{...}}}} ({exc})'
            )
        if not isinstance(doc, dict):
            return EdgeResponse.error(
                400, 'body must be a JSON object {"experiments": [...], "context": {...}}'
            )
        raw_experiments, explicit = doc.get("experiments"), doc.get("context", {})
        if not isinstance(explicit, dict):
            return EdgeResponse.error(400, '"context" must be an object of feature names to values')
    elif request.method == "GET":
        query = request.query
        raw_experiments = [v for k, v in query if k == "experiment"]
        explicit = {k[4:]: v for k, v in query if k.startswith("ctx.")}
    else:
        return EdgeResponse.error(405, "use GET or POST on /v1/decide")
    try:
        experiments = _experiments(raw_experiments, edge.config.max_experiments)
        visit = Visit(edge, platform, request, rng)
        protected = edge.config.server_features
        context = build_context(request, visit.cookies, explicit, protected) if visit.identity.consent else {}
    except (ValueError, ContextError) as exc:
        return EdgeResponse.error(400, str(exc))
    context = await visit.with_profile(context)
    decisions = [await visit.decide(e, context) for e in experiments]
    visit.flush()
    return EdgeResponse.json(200, {"decisions": decisions}, visit.headers())


def _refused_beacon(edge: Edge, request: EdgeRequest, path: str, what: str, why: str) -> EdgeResponse | None:
    """Why a browser beacon to ``path`` cannot be taken at all (None: it can be read)."""
    if request.method != "POST":
        return EdgeResponse.error(405, f"use POST on {path}")
    if len(request.body) > MAX_BODY_BYTES:
        return EdgeResponse.error(413, f"body larger than {MAX_BODY_BYTES} bytes")
    if not edge.config.edge_secret:
        return EdgeResponse.error(503, f"{what} need {Var.EDGE_SECRET} ({why})")
    return None


async def _events_route(edge: Edge, platform: Platform, request: EdgeRequest) -> EdgeResponse:
    refused = _refused_beacon(
        edge, request, "/v1/events", "outcome beacons", "it signs and checks decision tokens"
    )
    if refused is not None:
        return refused
    config = edge.config
    assert config.edge_secret is not None
    cookies = parse_cookies(request.header("cookie"))
    # A beacon never mints a visitor id; its decision tokens must have been minted for this one.
    units = known_units(request, cookies, config.user_header, config.identity_secret)
    try:
        events, rejected = parse_beacon(
            request.body,
            platform.now_ms(),
            units,
            secret=config.edge_secret,
            max_age_ms=config.token_max_age_s * 1000,
        )
    except EventError as exc:
        return EdgeResponse.error(400, str(exc))
    edge.rejected_beacons += len(rejected)
    if not events:
        return EdgeResponse.json(
            400, {"error": "no outcome in the beacon can be credited", "rejected": rejected[:20]}
        )
    edge.outbox.add(platform, config, events)
    return EdgeResponse.json(
        202, {"accepted": len(events), "rejected": rejected[:20]}, [("cache-control", "no-store")]
    )


async def _signals_route(edge: Edge, platform: Platform, request: EdgeRequest) -> EdgeResponse:
    refused = _refused_beacon(edge, request, "/v1/signals", "signals", "it names the visitor's profile")
    if refused is not None:
        return refused
    config = edge.config
    assert config.edge_secret is not None
    cookies = parse_cookies(request.header("cookie"))
    # Who did it is the cookie's business, never the body's; a beacon never mints an id.
    units = known_units(request, cookies, config.user_header, config.identity_secret)
    headers = [("cache-control", "no-store")]
    if units == (None,):
        return EdgeResponse.json(200, {"accepted": 0, "ignored": "no consent: nothing is recorded"}, headers)
    unit = units[0] if units else None
    if unit is None:
        return EdgeResponse.error(400, "no visitor id: signals need the perch_uid cookie a page view sets")
    tag = unit_tag(config.edge_secret, unit)
    try:
        events, rejected = parse_signals(request.body, unit, tag, platform.now_ms())
    except SignalError as exc:
        return EdgeResponse.error(400, str(exc))
    edge.rejected_signals += len(rejected)
    granted = edge.signal_budget.take(tag, len(events), platform.now_ms())
    throttled = len(events) - granted
    if throttled:
        budget = edge.signal_budget
        limit = (
            f"over this visitor's budget ({budget.capacity} signals at once, then {budget.per_s:g} a second)"
        )
        if not granted:
            return EdgeResponse.json(429, {"error": limit}, [("retry-after", "10"), *headers])
        events = events[:granted]
    if not events:
        return EdgeResponse.json(400, {"error": "no usable signal in the beacon", "rejected": rejected[:20]})
    edge.outbox.add(platform, config, events)
    # Within-session signals count at once: the page viewed becomes the session's interest.
    viewed = [e["category"] for e in events if e["kind"] == "page_view" and e.get("category")]
    if viewed:
        session = read_session(cookies.get(SESSION_COOKIE), config.edge_secret, unit)
        session = advance(session, platform.now_ms() // 1000, page=False, interest=viewed[-1])
        headers.append(
            ("set-cookie", session_cookie(session, config.edge_secret, unit, config.cookie_max_age_s))
        )
    answer = {
        "accepted": len(events),
        "rejected": rejected[:20],
        **({"throttled": throttled} if throttled else {}),
    }
    return EdgeResponse.json(202, answer, headers)


def _script(request: EdgeRequest) -> EdgeResponse:
    if request.method not in ("GET", "HEAD"):
        return EdgeResponse.error(405, "use GET on /v1/perch.js")
    headers = [
        ("content-type", "application/javascript; charset=utf-8"),
        ("cache-control", "public, max-age=3600"),
        ("x-content-type-options", "nosniff"),
    ]
    return EdgeResponse(200, headers, SCRIPT.encode())


def _health(edge: Edge, platform: Platform) -> EdgeResponse:
    now = platform.now_ms()
    doc = {
        "status": "ok",
        "isolate": {
            "started_ms": edge.started_ms,
            "requests": edge.requests,
            "rejected_identities": edge.rejected_identities,
            "rejected_beacons": edge.rejected_beacons,
            "rejected_signals": edge.rejected_signals,
            "throttled_signals": edge.signal_budget.refused,
        },
        "profiles": edge.profiles.health(),
        "snapshots": edge.cache.health(now),
        "events": edge.outbox.health(),
    }
    return EdgeResponse.json(200, doc, [("cache-control", "no-store")])


async def handle(edge: Edge, platform: Platform, request: EdgeRequest, rng: Generator) -> EdgeResponse:
    """Answer one request; never raises."""
    started = platform.perf_s()
    edge.requests += 1
    if not edge.started_ms:
        edge.started_ms = platform.now_ms()
    path = request.path
    try:
        if path == "/v1/decide":
            response = await _decide_route(edge, platform, request, rng)
        elif path == "/v1/events":
            response = await _events_route(edge, platform, request)
        elif path == "/v1/signals":
            response = await _signals_route(edge, platform, request)
        elif path == "/v1/perch.js":
            response = _script(request)
        elif path == "/v1/health":
            response = _health(edge, platform)
        else:
            response = await page_route(edge, platform, request, rng)
    except Exception:  # a bug of ours must not take the site down
        log.exception("edge handler failed on %s %s", request.method, path)
        if path.startswith("/v1/") or not edge.config.origin_url or request.method not in ("GET", "HEAD"):
            response = EdgeResponse.error(500, "internal error in the Perch edge")
        else:  # a page (safe to ask the origin again): the visitor gets it unpersonalized
            response = await passthrough(edge, platform, request)
    if not any(k == "server-timing" for k, _ in response.headers):
        response.headers.append(("server-timing", f"perch;dur={(platform.perf_s() - started) * 1000:.3f}"))
    return response
