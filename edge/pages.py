"""Pages: the origin's response, with its ``data-perch-slot`` elements filled as it streams.

Any request that is not an API call is asked of the origin.  An HTML page that holds slots goes
out with each slot's content replaced by its experiment's variant (:mod:`edge.rewrite`), decided
by one :class:`~edge.visit.Visit` for the whole page; anything else goes out as the origin sent it.
Personalization never fails a page: a slot whose decision fails keeps the origin's own content.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from core import Generator
from edge.config import Var
from edge.context import build_context
from edge.platform import EdgeRequest, EdgeResponse, Platform, SlotContent
from edge.rewrite import SLOT_ATTRIBUTE, TOKEN_ATTRIBUTE, TOKENS_ATTRIBUTE, rewrite_slots
from edge.visit import Edge, Visit

__all__ = ["origin_url_for", "page_route", "passthrough"]

log = logging.getLogger("perch.edge")

_LOOKAHEAD_BYTES = 512 * 1024
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def origin_url_for(origin: str, url: str) -> str:
    """Where ``url``'s path and query live at the origin (also the Worker's last resort)."""
    split = url.split("/", 3)
    return f"{origin.rstrip('/')}/{split[3] if len(split) > 3 else ''}"


async def passthrough(edge: Edge, platform: Platform, request: EdgeRequest) -> EdgeResponse:
    """The origin's response as it came, or a 502 saying why there is none."""
    if not edge.config.origin_url:
        return EdgeResponse.error(502, f"{Var.ORIGIN_URL} is not configured")
    try:
        origin = await platform.fetch_origin(request, origin_url_for(edge.config.origin_url, request.url))
    except Exception as exc:  # the origin, not personalization, failed
        log.warning("origin fetch failed: %s", exc)
        return EdgeResponse.error(502, f"origin unreachable: {type(exc).__name__}")
    # Runtimes hand over the body already decoded: its old framing headers no longer apply.
    headers = [(k, v) for k, v in origin.headers if k.lower() not in _HOP_BY_HOP]
    return EdgeResponse(origin.status, headers, origin.body)


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


def _list_content(items: list[dict[str, object]]) -> SlotContent | None:
    """A ranked slot: the list element's children are the items' fragments, in order; its
    ``data-perch-tokens`` holds their tokens in the same order (the i-th child's outcome beacon
    carries the i-th token). An item without a fragment leaves the origin's list as it was."""
    fragments = [item.get("html") for item in items]
    if not items or not all(isinstance(f, str) for f in fragments):
        return None
    tokens = [item.get("token") for item in items]
    attributes = {TOKENS_ATTRIBUTE: " ".join(t for t in tokens if isinstance(t, str))} if all(tokens) else {}
    return SlotContent("".join(f for f in fragments if isinstance(f, str)), attributes)


async def page_route(edge: Edge, platform: Platform, request: EdgeRequest, rng: Generator) -> EdgeResponse:
    page = await passthrough(edge, platform, request)
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
        visit = Visit(edge, platform, request, rng)
        context = build_context(request, visit.cookies, {}) if visit.identity.consent else {}
        context = await visit.with_profile(context)
    except Exception:  # a bug of ours: the page goes out as the origin made it
        log.exception("personalizing %s failed; serving the origin's page", request.path)
        return EdgeResponse(page.status, headers, body)

    async def fill(experiment: str) -> SlotContent | None:
        try:
            decision = await visit.decide(experiment, context)
        except Exception:  # mid-stream: the slot keeps the origin's content, the page goes on
            log.exception("deciding %r for a page failed", experiment)
            return None
        if "items" in decision:
            return _list_content(decision["items"])
        html, token = decision.get("html"), decision.get("token")
        if not isinstance(html, str):
            return None
        return SlotContent(html, {TOKEN_ATTRIBUTE: token} if token else {})

    charset = content_type.lower().partition("charset=")[2].split(";")[0].strip() or "utf-8"
    headers = [(k, v) for k, v in headers if k.lower() != "cache-control"]
    headers += [h for h in visit.headers() if h[0] != "server-timing"]

    async def rendered() -> AsyncIterator[bytes]:
        try:
            async for chunk in rewrite_slots(body, fill, charset):
                yield chunk
        finally:
            visit.flush()

    return EdgeResponse(page.status, headers, rendered())
