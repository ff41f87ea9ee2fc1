"""The context features a request carries, for segment matching.

Derived features: ``country``, ``colo``, ``timezone`` (from ``request.cf``),
``device`` (User-Agent: bot, mobile, tablet, desktop, unknown) and
``source`` (Referer and ``utm_medium``: email, paid, search, social,
internal, referral, direct).  Then the declared-preferences cookie
``perch_prefs`` (``name=value&...``, as ``pref.<name>``), and last ``ctx.*``
query parameters (or a POST body's ``context``), which the site sends
deliberately and so win.  Which features matter is the snapshot's business:
segments only look at the names they use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from core.errors import PerchError
from edge.platform import EdgeRequest

__all__ = ["MAX_FEATURES", "ContextError", "build_context", "device_class", "source_class"]

MAX_FEATURES = 32
_NAME = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")
_MAX_VALUE = 128

_BOT = re.compile(r"bot|crawl|spider|slurp|headless|lighthouse|preview", re.I)
_TABLET = re.compile(r"ipad|tablet|kindle|silk|playbook|android(?!.*mobile)", re.I)
_MOBILE = re.compile(r"mobi|iphone|ipod|android|windows phone|blackberry|opera mini", re.I)
_SEARCH = ("google.", "bing.", "duckduckgo.", "yahoo.", "baidu.", "yandex.", "ecosia.", "search.brave.")
_SOCIAL = (
    "facebook.",
    "fb.",
    "t.co",
    "twitter.",
    "x.com",
    "linkedin.",
    "lnkd.in",
    "instagram.",
    "reddit.",
    "pinterest.",
    "tiktok.",
    "youtube.",
    "mastodon.",
    "threads.",
)
_PAID = {"cpc", "ppc", "paid", "paidsearch", "display", "cpm"}
_EMAIL = {"email", "e-mail", "newsletter"}


class ContextError(PerchError, ValueError):
    """Caller-supplied context breaks the limits; the message says which."""


# An isolate sees the same few hundred User-Agent strings over and over; three
# regex searches per request cost more than the decision's hashing.
@lru_cache(maxsize=512)
def device_class(user_agent: str | None) -> str:
    if not user_agent:
        return "unknown"
    if _BOT.search(user_agent):
        return "bot"
    if _TABLET.search(user_agent):
        return "tablet"
    if _MOBILE.search(user_agent):
        return "mobile"
    return "desktop"


def _host_matches(host: str, patterns: Iterable[str]) -> bool:
    host = host.removeprefix("www.").removeprefix("m.")
    return any(host.startswith(p) or f".{p}" in f".{host}" for p in patterns)


def source_class(referer: str | None, own_host: str, utm_medium: str | None) -> str:
    medium = (utm_medium or "").lower()
    if medium in _EMAIL:
        return "email"
    if medium in _PAID:
        return "paid"
    if not referer:
        return "direct"
    try:
        host = (urlsplit(referer).hostname or "").lower()
    except ValueError:  # e.g. "http://[::1/x": someone sent us here, we cannot tell who
        return "referral"
    if not host:
        return "direct"
    if host == own_host:
        return "internal"
    if _host_matches(host, _SEARCH):
        return "search"
    if _host_matches(host, _SOCIAL):
        return "social"
    return "referral"


def _checked(name: str, value: object) -> tuple[str, str]:
    if not _NAME.fullmatch(name):
        raise ContextError(
            f"context feature {name!r}: names are 1-64 of a-z, 0-9, '_.-', starting with a letter"
        )
    if not isinstance(value, (str, int, float, bool)):
        raise ContextError(f"context feature {name!r}: value must be a string or number")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if len(text) > _MAX_VALUE:
        raise ContextError(f"context feature {name!r}: value longer than {_MAX_VALUE} characters")
    if not _usable(text):
        raise ContextError(
            f"context feature {name!r}: value must be UTF-8 text without control characters "
            "(no lone surrogates, no NUL)"
        )
    return name, text


def _usable(value: str) -> bool:
    """Text we may store and hash: no control characters, NUL included, and no lone surrogates
    (``str.isprintable`` refuses both categories, so it implies ``core.is_text``)."""
    return value.isprintable()


def build_context(
    request: EdgeRequest,
    cookies: Mapping[str, str],
    explicit: Mapping[str, Any],
    server_features: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """All features of ``request``; ``explicit`` (ctx.* or a POST body's context) wins, except
    over ``server_features``, which only the edge sets (a client naming them is ignored)."""
    query = dict(request.query)
    context: dict[str, str] = {
        "device": device_class(request.header("user-agent")),
        "source": source_class(request.header("referer"), request.hostname, query.get("utm_medium")),
    }
    for name in ("country", "colo", "timezone"):
        value = request.cf.get(name)
        if isinstance(value, str) and value and len(value) <= _MAX_VALUE and _usable(value):
            context[name] = value
    prefs = cookies.get("perch_prefs")
    if prefs:
        for name, value in parse_qsl(prefs)[:MAX_FEATURES]:
            if _NAME.fullmatch(name) and len(value) <= _MAX_VALUE and _usable(value):
                context[f"pref.{name}"] = value  # a visitor's cookie is never trusted to fail a page
    if len(explicit) > MAX_FEATURES:
        raise ContextError(f"{len(explicit)} context features, at most {MAX_FEATURES}")
    for name, value in explicit.items():
        key, text = _checked(name, value)
        if key not in server_features:
            context[key] = text
    return context
