"""The edge's settings, read from the Worker's vars (or the environment)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ConfigError", "EdgeConfig"]


class ConfigError(ValueError):
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


def _names(raw: str | None, default: str) -> frozenset[str]:
    return frozenset(n.strip() for n in (default if raw is None else raw).split(",") if n.strip())


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
    event_linger_ms: int = 0  # gather events of this long across requests into one batch
    token_max_age_s: int = 7 * 24 * 3600  # how long after a decision its outcome beacon is accepted
    # Features only the edge derives: a client's ctx.* or POSTed context cannot set them.
    server_features: frozenset[str] = frozenset({"country", "colo", "timezone"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin_url", _url("ORIGIN_URL", self.origin_url, False))
        object.__setattr__(
            self, "control_plane_url", _url("CONTROL_PLANE_URL", self.control_plane_url, False)
        )
        object.__setattr__(self, "user_header", self.user_header.lower())
        for name in ("cache_ttl_s", "retry_after_s", "kv_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}={value!r}, must be a number > 0")
        if not 0 <= self.event_linger_ms <= 10_000:
            raise ConfigError(f"event_linger_ms={self.event_linger_ms}, must be in [0, 10000]")
        if not 60 <= self.token_max_age_s <= 90 * 24 * 3600:
            raise ConfigError(f"token_max_age_s={self.token_max_age_s}, must be in [60, 7776000]")
        if not 1 <= self.max_experiments <= 100:
            raise ConfigError(f"max_experiments={self.max_experiments}, must be in [1, 100]")

    @classmethod
    def from_vars(cls, env: Mapping[str, Any]) -> EdgeConfig:
        """From Worker vars / environment variables (missing ones keep defaults)."""

        def get(name: str) -> str | None:
            value = env.get(name)
            return None if value is None else str(value)

        def number(name: str, default: float) -> float:
            raw = get(name)
            try:
                return float(raw) if raw else default
            except ValueError:
                raise ConfigError(f"{name}={raw!r}, must be a number") from None

        return cls(
            origin_url=get("ORIGIN_URL"),
            control_plane_url=get("CONTROL_PLANE_URL"),
            edge_secret=get("PERCH_EDGE_SECRET"),
            identity_secret=get("PERCH_IDENTITY_SECRET") or None,
            user_header=get("PERCH_USER_HEADER") or "x-perch-user",
            cache_ttl_s=number("PERCH_CACHE_TTL_S", 30.0),
            retry_after_s=number("PERCH_RETRY_AFTER_S", 5.0),
            kv_timeout_s=number("PERCH_KV_TIMEOUT_S", 0.25),
            event_linger_ms=int(number("PERCH_EVENT_LINGER_MS", 0)),
            token_max_age_s=int(number("PERCH_TOKEN_MAX_AGE_S", 7 * 24 * 3600)),
            server_features=_names(get("PERCH_SERVER_FEATURES"), "country,colo,timezone"),
        )
