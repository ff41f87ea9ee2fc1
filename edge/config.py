"""The edge's settings, read from the Worker's vars (or the environment), and their names.

:class:`Var` is the one list of the variables :meth:`EdgeConfig.from_vars` reads; with
:data:`KV_BINDING` and :data:`EVENT_QUEUE_PREFIX` it names everything the Worker expects of its
environment, so the Worker, the local runner, the tests and wrangler.toml (held to it by a test)
refer to these instead of spelling names of their own.

Event queues are not a setting: they are the runtime's ``PERCH_EVENTS_*`` Queues producer
bindings (:func:`event_queue_names` states the rule), found by the platform. What the settings
decide is how long the outbox gathers events before it sends them (:meth:`EdgeConfig.linger_ms`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from core.errors import PerchError

__all__ = [
    "EVENT_QUEUE_PREFIX",
    "KV_BINDING",
    "QUEUE_LINGER_MS",
    "SECRETS",
    "ConfigError",
    "EdgeConfig",
    "Var",
    "event_queue_names",
]


class Var(StrEnum):
    """The Worker's variables (wrangler.toml's ``[vars]``, or secrets), each feeding one setting."""

    ORIGIN_URL = "ORIGIN_URL"
    CONTROL_PLANE_URL = "CONTROL_PLANE_URL"
    EDGE_SECRET = "PERCH_EDGE_SECRET"
    IDENTITY_SECRET = "PERCH_IDENTITY_SECRET"
    USER_HEADER = "PERCH_USER_HEADER"
    CACHE_TTL_S = "PERCH_CACHE_TTL_S"
    RETRY_AFTER_S = "PERCH_RETRY_AFTER_S"
    KV_TIMEOUT_S = "PERCH_KV_TIMEOUT_S"
    EVENT_LINGER_MS = "PERCH_EVENT_LINGER_MS"
    TOKEN_MAX_AGE_S = "PERCH_TOKEN_MAX_AGE_S"
    SERVER_FEATURES = "PERCH_SERVER_FEATURES"
    PROFILE_TIMEOUT_S = "PERCH_PROFILE_TIMEOUT_S"
    PROFILE_TTL_S = "PERCH_PROFILE_TTL_S"
    PROFILES = "PERCH_PROFILES"


# Set with `wrangler secret put`, never in wrangler.toml, which is committed.
SECRETS = frozenset({Var.EDGE_SECRET, Var.IDENTITY_SECRET})
# The KV namespace binding the control plane publishes snapshots to.
KV_BINDING = "PERCH_KV"
# Queues producer bindings named PERCH_EVENTS_<suffix> carry the edge's events.
EVENT_QUEUE_PREFIX = "PERCH_EVENTS_"
# With queues, a drain is one sendBatch per queue whatever it holds: gathering 200 ms of an
# isolate's events fills messages (fewer, fuller messages for `perch consume`) at no cost to pages.
QUEUE_LINGER_MS = 200
MAX_LINGER_MS = 10_000


class ConfigError(PerchError, ValueError):
    """A setting is missing or malformed; the message names it."""


def _url(name: str, value: str | None, required: bool) -> str | None:
    if not value:
        if required:
            raise ConfigError(f"{name} is required (an http(s) URL)")
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}={value!r}, must be an http(s) URL")
    return value.rstrip("/")


def _switch(name: str, raw: str | None, default: bool) -> bool:
    if not raw:
        return default
    if raw.lower() in ("on", "true", "1"):
        return True
    if raw.lower() in ("off", "false", "0"):
        return False
    raise ConfigError(f"{name}={raw!r}, must be 'on' or 'off'")


def _names(raw: str | None, default: str) -> frozenset[str]:
    return frozenset(n.strip() for n in (default if raw is None else raw).split(",") if n.strip())


def event_queue_names(names: Iterable[str]) -> tuple[str, ...]:
    """The event queue bindings among ``names``, in route order (queue index = position).

    A binding counts if its name is ``PERCH_EVENTS_`` followed by at least one character.
    The order is by name, so every isolate of a deployment numbers the queues alike and
    ``core.route`` sends a decision's exposure and outcomes to the same queue; as text, so
    ``PERCH_EVENTS_10`` precedes ``PERCH_EVENTS_2`` (zero-pad the suffixes to read them in order).
    """
    return tuple(sorted({n for n in names if n.startswith(EVENT_QUEUE_PREFIX) and n != EVENT_QUEUE_PREFIX}))


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    origin_url: str | None = None
    control_plane_url: str | None = None
    edge_secret: str | None = None
    identity_secret: str | None = None  # the site signs user ids with it (core.sign_identity)
    user_header: str = "x-perch-user"
    cache_ttl_s: float = 30.0  # how long an isolate trusts its copy before revalidating
    retry_after_s: float = 5.0  # after a KV miss or failure, before asking again inline
    kv_timeout_s: float = 0.25  # the longest a request waits on KV
    cookie_max_age_s: int = 365 * 24 * 3600
    max_experiments: int = 20
    # Gather events of this long across requests into one batch. None: 0 for the signed POST
    # (a drain per request's events, as Workers without queues have always done) and
    # QUEUE_LINGER_MS with event queues; a number applies to both paths.
    event_linger_ms: int | None = None
    token_max_age_s: int = 7 * 24 * 3600  # how long after a decision its outcome beacon is accepted
    # Features only the edge derives: a client's ctx.* or POSTed context cannot set them.
    server_features: frozenset[str] = frozenset({"country", "colo", "timezone"})
    # A profile read (edge.profiles) waits this long at most: inside the ~50 ms identity budget.
    profile_timeout_s: float = 0.02
    profile_ttl_s: float = 300.0  # how long an isolate keeps a visitor's profile
    profiles: bool = True  # off: no profile reads (a site without profiles saves the KV read)

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin_url", _url(Var.ORIGIN_URL, self.origin_url, False))
        object.__setattr__(
            self, "control_plane_url", _url(Var.CONTROL_PLANE_URL, self.control_plane_url, False)
        )
        object.__setattr__(self, "user_header", self.user_header.lower())
        for name in ("cache_ttl_s", "retry_after_s", "kv_timeout_s", "profile_timeout_s", "profile_ttl_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}={value!r}, must be a number > 0")
        linger = self.event_linger_ms
        if linger is not None and not (
            isinstance(linger, int) and not isinstance(linger, bool) and 0 <= linger <= MAX_LINGER_MS
        ):
            raise ConfigError(
                f"event_linger_ms={linger!r}, must be an integer in [0, {MAX_LINGER_MS}], or None "
                f"(0 without event queues, {QUEUE_LINGER_MS} with them)"
            )
        if not 60 <= self.token_max_age_s <= 90 * 24 * 3600:
            raise ConfigError(f"token_max_age_s={self.token_max_age_s}, must be in [60, 7776000]")
        if not 1 <= self.max_experiments <= 100:
            raise ConfigError(f"max_experiments={self.max_experiments}, must be in [1, 100]")

    def linger_ms(self, queued: bool) -> int:
        """How long a drain waits for more events; ``queued``: the events go to event queues."""
        if self.event_linger_ms is not None:
            return self.event_linger_ms
        return QUEUE_LINGER_MS if queued else 0

    @classmethod
    def from_vars(cls, env: Mapping[str, Any]) -> EdgeConfig:
        """From Worker vars / environment variables, by :class:`Var` (missing ones keep defaults)."""

        def get(name: Var) -> str | None:
            value = env.get(name)
            return None if value is None else str(value)

        def number(name: Var, default: float) -> float:
            raw = get(name)
            try:
                return float(raw) if raw else default
            except ValueError:
                raise ConfigError(f"{name}={raw!r}, must be a number") from None

        def milliseconds(name: Var) -> int | None:
            raw = get(name)
            if not raw:
                return None  # unset: the default follows the event path
            try:
                return int(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r}, must be a whole number of ms") from None

        return cls(
            origin_url=get(Var.ORIGIN_URL),
            control_plane_url=get(Var.CONTROL_PLANE_URL),
            edge_secret=get(Var.EDGE_SECRET),
            identity_secret=get(Var.IDENTITY_SECRET) or None,
            user_header=get(Var.USER_HEADER) or "x-perch-user",
            cache_ttl_s=number(Var.CACHE_TTL_S, 30.0),
            retry_after_s=number(Var.RETRY_AFTER_S, 5.0),
            kv_timeout_s=number(Var.KV_TIMEOUT_S, 0.25),
            event_linger_ms=milliseconds(Var.EVENT_LINGER_MS),
            token_max_age_s=int(number(Var.TOKEN_MAX_AGE_S, 7 * 24 * 3600)),
            server_features=_names(get(Var.SERVER_FEATURES), "country,colo,timezone"),
            profile_timeout_s=number(Var.PROFILE_TIMEOUT_S, 0.02),
            profile_ttl_s=number(Var.PROFILE_TTL_S, 300.0),
            profiles=_switch(Var.PROFILES, get(Var.PROFILES), True),
        )
