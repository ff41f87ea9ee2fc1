"""The control plane's settings, from the environment, validated once at startup."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from core import PerchError, is_sensitive

__all__ = ["Settings", "SettingsError"]


class SettingsError(PerchError, ValueError):
    """A setting is missing or malformed; the message names the variable."""


# How long accepted batch signatures are remembered (ingestion purges older ones, at most a
# minute late); a signature may be valid for twice the tolerance, so the tolerance is bounded.
REPLAY_MEMORY_S = 900
MAX_SIGNATURE_TOLERANCE_S = (REPLAY_MEMORY_S - 60) // 2


_CLICKHOUSE_SCHEMES = ("chdb", "clickhouse", "clickhouses")


@dataclass(frozen=True, slots=True)
class Settings:
    admin_token: str
    edge_secret: str
    data_dir: Path = Path(".perch")
    database_url: str = ""  # default: SQLite under data_dir
    # Where `perch consume` stores events instead (chdb:///path or clickhouse://host:8123/db); the
    # experiments, snapshots and sessions stay in database_url, which transactions and locks need.
    events_url: str = ""
    kv: str = "local"  # local | cloudflare
    cf_account_id: str = ""
    cf_namespace_id: str = ""
    cf_api_token: str = ""
    unit_salt: str = ""  # default: derived from edge_secret; set it explicitly in production
    publish_interval_s: float = 30.0
    signature_tolerance_s: int = 300
    max_event_body_bytes: int = 4 * 1024 * 1024
    max_admin_body_bytes: int = 256 * 1024
    learner_draws: int = 20_000
    promotion_tolerance: float = (
        0.005  # how much worse (reward per decision, by SNIPS) a new snapshot may look
    )
    # Stated attributes (PUT /v1/users/{id}/attributes) the profile publishes as features.
    profile_attributes: frozenset[str] = frozenset()
    # Lets a site's backend sign attribute updates without holding the admin token ("" : admin only).
    site_secret: str = ""

    def __post_init__(self) -> None:
        if len(self.admin_token) < 16:
            raise SettingsError("PERCH_ADMIN_TOKEN must be set, at least 16 characters")
        if len(self.edge_secret) < 16:
            raise SettingsError("PERCH_EDGE_SECRET must be set, at least 16 characters")
        if self.kv not in ("local", "cloudflare"):
            raise SettingsError(f"PERCH_KV={self.kv!r}, must be 'local' or 'cloudflare'")
        if self.kv == "cloudflare" and not (
            self.cf_account_id and self.cf_namespace_id and self.cf_api_token
        ):
            raise SettingsError(
                "PERCH_KV=cloudflare needs PERCH_CF_ACCOUNT_ID, PERCH_CF_KV_NAMESPACE_ID "
                "and PERCH_CF_API_TOKEN"
            )
        if not (math.isfinite(self.publish_interval_s) and self.publish_interval_s >= 1.0):
            raise SettingsError(
                f"PERCH_PUBLISH_INTERVAL_S={self.publish_interval_s}, must be >= 1 (KV: 1 write/s/key)"
            )
        if not (math.isfinite(self.promotion_tolerance) and self.promotion_tolerance >= 0):
            raise SettingsError(f"PERCH_PROMOTION_TOLERANCE={self.promotion_tolerance}, must be >= 0")
        if not 1 <= self.signature_tolerance_s <= MAX_SIGNATURE_TOLERANCE_S:
            # A signature valid from t - tolerance to t + tolerance must be remembered all that time.
            raise SettingsError(
                f"signature_tolerance_s={self.signature_tolerance_s}, must be in "
                f"[1, {MAX_SIGNATURE_TOLERANCE_S}] (replays are recognised for {REPLAY_MEMORY_S} s)"
            )
        if self.database_url.split(":", 1)[0] in _CLICKHOUSE_SCHEMES:
            raise SettingsError(
                f"PERCH_DATABASE_URL={self.database_url!r}: ClickHouse holds events only; set "
                "PERCH_EVENTS_URL to it and keep PERCH_DATABASE_URL for the experiments "
                "(SQLite or PostgreSQL)"
            )
        if self.events_url and self.events_url.split(":", 1)[0] not in _CLICKHOUSE_SCHEMES:
            raise SettingsError(
                f"PERCH_EVENTS_URL={self.events_url!r}, must be chdb:///path or clickhouse://user:pass@host:8123/db"
            )
        if self.site_secret and len(self.site_secret) < 16:
            raise SettingsError("PERCH_SITE_SECRET, when set, must be at least 16 characters")
        for name in sorted(self.profile_attributes):
            if is_sensitive(name):
                raise SettingsError(
                    f"PERCH_PROFILE_ATTRIBUTES names {name!r}, a sensitive category (core.profile): "
                    "it may not be a feature"
                )
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{(self.data_dir / 'perch.db').resolve()}")
        if not self.unit_salt:
            derived = hashlib.sha256(b"perch-unit-salt:" + self.edge_secret.encode()).hexdigest()
            object.__setattr__(self, "unit_salt", derived)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        def number(name: str, default: float) -> float:
            raw = env.get(name)
            try:
                return float(raw) if raw else default
            except ValueError:
                raise SettingsError(f"{name}={raw!r}, must be a number") from None

        return cls(
            admin_token=env.get("PERCH_ADMIN_TOKEN", ""),
            edge_secret=env.get("PERCH_EDGE_SECRET", ""),
            data_dir=Path(env.get("PERCH_DATA_DIR") or ".perch"),
            database_url=env.get("PERCH_DATABASE_URL", ""),
            events_url=env.get("PERCH_EVENTS_URL", ""),
            kv=env.get("PERCH_KV") or "local",
            cf_account_id=env.get("PERCH_CF_ACCOUNT_ID", ""),
            cf_namespace_id=env.get("PERCH_CF_KV_NAMESPACE_ID", ""),
            cf_api_token=env.get("PERCH_CF_API_TOKEN", ""),
            unit_salt=env.get("PERCH_UNIT_SALT", ""),
            publish_interval_s=number("PERCH_PUBLISH_INTERVAL_S", 30.0),
            promotion_tolerance=number("PERCH_PROMOTION_TOLERANCE", 0.005),
            site_secret=env.get("PERCH_SITE_SECRET", ""),
            profile_attributes=frozenset(
                n.strip() for n in env.get("PERCH_PROFILE_ATTRIBUTES", "").split(",") if n.strip()
            ),
        )
