"""The edge's request handler: parse, call core, respond.

Runs unchanged under workerd, Pyodide in Node and CPython; the runtime is
reached only through :class:`edge.platform.Platform`.  Routes:

* ``GET|POST /v1/decide`` — decisions as JSON;
* ``POST /v1/events`` — outcome beacons, validated and forwarded home;
* ``GET /v1/health`` — what this isolate holds;
* any other ``GET`` — the origin's page with ``data-perch-slot`` elements filled.

Personalization never fails a page: without a usable snapshot a slot keeps
the origin's own content and a decision says ``fallback`` and why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from core import (
    KEY_RE,
    Decision,
    DecisionToken,
    EventError,
    Generator,
    JSONInputError,
    decide,
    exposure_event,
    feature_path,
    mint_token,
    parse_beacon,
    parse_json,
    stitch_event,
    unit_tag,
)
from edge.cache import CacheEntry, SnapshotCache
from edge.config import EdgeConfig
from edge.context import ContextError, build_context
from edge.identity import Identity, identify, known_units, parse_cookies
from edge.outbox import Outbox
from edge.platform import EdgeRequest, EdgeResponse, Platform, SlotContent
from edge.rewrite import SLOT_ATTRIBUTE, TOKEN_ATTRIBUTE, rewrite_slots

__all__ = ["Edge", "handle"]

log = logging.getLogger("perch.edge")

MAX_BODY_BYTES = 64 * 1024
_LOOKAHEAD_BYTES = 512 * 1024
_JSON = "application/json"


@dataclass
class Edge:
    """What lives as long as the isolate: settings, the snapshot cache, the outbox."""

    config: EdgeConfig
    cache: SnapshotCache = field(init=False)
    outbox: Outbox = field(init=False)
    started_ms: int = 0
    requests: int = 0
    rejected_identities: int = 0  # user ids offered without a valid site signature: ignored
    rejected_beacons: int = 0  # outcome items without a valid token for this visitor: not credited

    def __post_init__(self) -> None:
        self.cache = SnapshotCache(self.config)
        self.outbox = Outbox()


def _json(status: int, doc: Any, headers: list[tuple[str, str]] | None = None) -> EdgeResponse:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return EdgeResponse(status, [("content-type", _JSON), *(headers or [])], body)


def _error(status: int, message: str) -> EdgeResponse:
    return _json(status, {"error": message}, [("cache-control", "no-store")])


def _personalized(decision: Decision) -> str:
    if decision.propensity is not None:
        segment, p = decision.segment, decision.propensity
        return f"chosen for segment {segment!r} by Thompson sampling (propensity {p:.3f})"
    if decision.because:
        return "shown because " + ", ".join(decision.because) + " (contextual Thompson sampling)"
    return "chosen by contextual Thompson sampling (an exploring draw, or no feature favoured it)"


def _why(decision: Decision, max_age_s: float) -> str:
    return {
        "personalized": _personalized(decision),
        "holdout": f"in the holdout group of {decision.experiment!r}: always the default variant",
        "consent": "no personalization without consent: the default variant",
        "stale": f"snapshot is {decision.snapshot_age_s:.0f}s old (limit {max_age_s:.0f}s): default variant",
    }.get(decision.reason, decision.reason)


def _fallback(experiment: str, entry: CacheEntry, rng: Generator) -> dict[str, Any]:
    return {
        "experiment": experiment,
        "arm": None,
        "payload": None,
        "html": None,
        "propensity": None,
        "reason": "fallback",
        "segment": None,
        "snapshot_version": None,
        "snapshot_age_s": None,
        "decision_id": f"{rng.getrandbits(128):032x}",
        "because": [],
        "why": f"no snapshot available ({entry.error or 'not loaded yet'}): keep your default variant",
        "token": None,  # nothing was decided: there is no outcome to credit
    }


class _Request:
    """One request's decisions and the events they produce."""

    def __init__(self, edge: Edge, platform: Platform, request: EdgeRequest, rng: Generator) -> None:
        self.edge, self.platform, self.request, self.rng = edge, platform, request, rng
        self.cookies = parse_cookies(request.header("cookie"))
        config = edge.config
        self.identity: Identity = identify(
            request,
            self.cookies,
            config.user_header,
            rng,
            config.cookie_max_age_s,
            secret=config.identity_secret,
        )
        if self.identity.rejected_claim:
            edge.rejected_identities += 1
        self.events: list[dict[str, Any]] = []
        self.unit_tag: str | None = None
        self.decide_s = 0.0
        if self.identity.stitch:
            self.events.append(stitch_event(*self.identity.stitch, platform.now_ms()))

    async def decide(self, experiment: str, context: Mapping[str, str]) -> dict[str, Any]:
        started = self.platform.perf_s()
        try:
            entry = await self.edge.cache.get(experiment, self.platform)
            snap = entry.snapshot
            if snap is None:
                return _fallback(experiment, entry, self.rng)
            now = self.platform.now_ms()
            decision = decide(
                snap, self.identity.unit, context, now_ms=now, rng=self.rng, consent=self.identity.consent
            )
            # What the token and the exposure report: the cell decide() used (core.features).
            names = snap.context_features
            reported = dict(zip(names, feature_path(names, context), strict=True))
            self.events.append(exposure_event(decision, self.identity.unit, now, reported))
            out = decision.to_dict()
            out["why"] = _why(decision, snap.max_age_s)
            out["token"] = self._token(decision, reported, now)
            return out
        finally:
            self.decide_s += self.platform.perf_s() - started

    def _token(self, decision: Decision, cell: dict[str, str], now: int) -> str | None:
        """What a beacon must bring back for this decision's outcome to count."""
        secret = self.edge.config.edge_secret
        if not secret:
            return None
        if self.unit_tag is None:  # one HMAC per request, however many decisions it makes
            self.unit_tag = unit_tag(secret, self.identity.unit)
        return mint_token(
            secret,
            DecisionToken(
                decision.decision_id,
                decision.experiment,
                decision.arm,
                cell,
                now,
                decision.snapshot_version,
                self.unit_tag,
                decision.reason,  # so the control plane can credit the outcome from the token alone
            ),
        )

    def headers(self, cache_control: str | None = "private, no-store") -> list[tuple[str, str]]:
        out = [("set-cookie", c) for c in self.identity.set_cookies]
        if cache_control:
            out.append(("cache-control", cache_control))
        out.append(("server-timing", f"perch;dur={self.decide_s * 1000:.3f}"))
        return out

    def flush(self) -> None:
        """Send this request's events home in the background."""
        if self.events:
            events, self.events = self.events, []
            self.edge.outbox.add(self.platform, self.edge.config, events)


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
            return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            doc = parse_json(request.body or b"null")
        except JSONInputError as exc:
            return _error(400, f'body must be JSON {{"experiments": [...], "context": {{...}}}} ({exc})')
        if not isinstance(doc, dict):
            return _error(400, 'body must be a JSON object {"experiments": [...], "context": {...}}')
        raw_experiments, explicit = doc.get("experiments"), doc.get("context", {})
        if not isinstance(explicit, dict):
            return _error(400, '"context" must be an object of feature names to values')
    elif request.method == "GET":
        query = request.query
        raw_experiments = [v for k, v in query if k == "experiment"]
        explicit = {k[4:]: v for k, v in query if k.startswith("ctx.")}
    else:
        return _error(405, "use GET or POST on /v1/decide")
    try:
        experiments = _experiments(raw_experiments, edge.config.max_experiments)
        run = _Request(edge, platform, request, rng)
        protected = edge.config.server_features
        context = build_context(request, run.cookies, explicit, protected) if run.identity.consent else {}
    except (ValueError, ContextError) as exc:
        return _error(400, str(exc))
    decisions = [await run.decide(e, context) for e in experiments]
    run.flush()
    return _json(200, {"decisions": decisions}, run.headers())


async def _events_route(edge: Edge, platform: Platform, request: EdgeRequest) -> EdgeResponse:
    if request.method != "POST":
        return _error(405, "use POST on /v1/events")
    if len(request.body) > MAX_BODY_BYTES:
        return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
    config = edge.config
    if not config.edge_secret:
        return _error(503, "outcome beacons need PERCH_EDGE_SECRET (it signs and checks decision tokens)")
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
        return _error(400, str(exc))
    edge.rejected_beacons += len(rejected)
    if not events:
        return _json(400, {"error": "no outcome in the beacon can be credited", "rejected": rejected[:20]})
    edge.outbox.add(platform, config, events)
    return _json(202, {"accepted": len(events), "rejected": rejected[:20]}, [("cache-control", "no-store")])


def _health(edge: Edge, platform: Platform) -> EdgeResponse:
    now = platform.now_ms()
    doc = {
        "status": "ok",
        "isolate": {
            "started_ms": edge.started_ms,
            "requests": edge.requests,
            "rejected_identities": edge.rejected_identities,
            "rejected_beacons": edge.rejected_beacons,
        },
        "snapshots": edge.cache.health(now),
        "events": edge.outbox.health(),
    }
    return _json(200, doc, [("cache-control", "no-store")])


async def _peek_for_slots(body: AsyncIterator[bytes]) -> tuple[bool, AsyncIterator[bytes]]:
    """Read ahead until a slot shows up (or the page ends): headers depend on it."""
    seen: list[bytes] = []
    size = 0
    found = False
    needle = SLOT_ATTRIBUTE.encode()
    tail = b""
    async for chunk in body:
        seen.append(chunk)
        size += len(chunk)
        if needle in (tail + chunk).lower():
            found = True
            break
        if size > _LOOKAHEAD_BYTES:
            found = True  # too far to look: assume it may be personalized
            break
        tail = chunk[-len(needle) :]

    async def replay() -> AsyncIterator[bytes]:
        for chunk in seen:
            yield chunk
        async for chunk in body:
            yield chunk

    return found, replay()


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def origin_url_for(origin: str, url: str) -> str:
    """Where ``url``'s path and query live at the origin (also the Worker's last resort)."""
    split = url.split("/", 3)
    return f"{origin.rstrip('/')}/{split[3] if len(split) > 3 else ''}"


async def _passthrough(edge: Edge, platform: Platform, request: EdgeRequest) -> EdgeResponse:
    """The origin's response as it came, or a 502 saying why there is none."""
    if not edge.config.origin_url:
        return _error(502, "ORIGIN_URL is not configured")
    try:
        origin = await platform.fetch_origin(request, origin_url_for(edge.config.origin_url, request.url))
    except Exception as exc:  # the origin, not personalization, failed
        log.warning("origin fetch failed: %s", exc)
        return _error(502, f"origin unreachable: {type(exc).__name__}")
    # Runtimes hand over the body already decoded: its old framing headers no longer apply.
    headers = [(k, v) for k, v in origin.headers if k.lower() not in _HOP_BY_HOP]
    return EdgeResponse(origin.status, headers, origin.body)


async def _page_route(edge: Edge, platform: Platform, request: EdgeRequest, rng: Generator) -> EdgeResponse:
    page = await _passthrough(edge, platform, request)
    headers = page.headers
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    if (
        request.method != "GET"
        or page.status != 200
        or "text/html" not in content_type.lower()
        or isinstance(page.body, bytes)  # our own 502s: nothing to personalize
    ):
        return page
    has_slots, body = await _peek_for_slots(page.body)
    if not has_slots:
        return EdgeResponse(page.status, headers, body)
    try:
        run = _Request(edge, platform, request, rng)
        context = build_context(request, run.cookies, {}) if run.identity.consent else {}
    except Exception:  # a bug of ours: the page goes out as the origin made it
        log.exception("personalizing %s failed; serving the origin's page", request.path)
        return EdgeResponse(page.status, headers, body)

    async def fill(experiment: str) -> SlotContent | None:
        try:
            decision = await run.decide(experiment, context)
        except Exception:  # mid-stream: the slot keeps the origin's content, the page goes on
            log.exception("deciding %r for a page failed", experiment)
            return None
        html, token = decision.get("html"), decision.get("token")
        if not isinstance(html, str):
            return None
        return SlotContent(html, {TOKEN_ATTRIBUTE: token} if token else {})

    charset = content_type.lower().partition("charset=")[2].split(";")[0].strip() or "utf-8"
    headers = [(k, v) for k, v in headers if k.lower() != "cache-control"]
    headers += [h for h in run.headers() if h[0] != "server-timing"]

    async def rendered() -> AsyncIterator[bytes]:
        try:
            async for chunk in rewrite_slots(body, fill, charset):
                yield chunk
        finally:
            run.flush()

    return EdgeResponse(page.status, headers, rendered())


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
        elif path == "/v1/health":
            response = _health(edge, platform)
        else:
            response = await _page_route(edge, platform, request, rng)
    except Exception:  # a bug of ours must not take the site down
        log.exception("edge handler failed on %s %s", request.method, path)
        if path.startswith("/v1/") or not edge.config.origin_url or request.method not in ("GET", "HEAD"):
            response = _error(500, "internal error in the Perch edge")
        else:  # a page (safe to ask the origin again): the visitor gets it unpersonalized
            response = await _passthrough(edge, platform, request)
    if not any(k == "server-timing" for k, _ in response.headers):
        response.headers.append(("server-timing", f"perch;dur={(platform.perf_s() - started) * 1000:.3f}"))
    return response
