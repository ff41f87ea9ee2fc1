"""The control plane's tables (SQLAlchemy Core), shared by the store and Alembic.

Changes to these tables go through a migration in control_plane/storage/migrations/;
``tests/control_plane/test_migrations.py`` checks the two agree.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = [
    "alerts",
    "audit",
    "counters",
    "experiments",
    "exposures",
    "metadata",
    "outcomes",
    "profile_state",
    "profiles",
    "seen_batches",
    "signals",
    "snapshots",
    "stat_deltas",
    "stats",
    "stitches",
    "revoked_sessions",
    "user_attributes",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# One row per experiment; ``spec`` is ExperimentSpec JSON at ``version``.
experiments = Table(
    "experiments",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("spec", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("archived", Boolean, nullable=False, default=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# Every change to an experiment, as it was after the change.
audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("experiment", String(128), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("action", String(16), nullable=False),
    Column("spec", Text, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
)

# Exposures, idempotent by decision id (an exposure event's id is derived from it).
exposures = Table(
    "exposures",
    metadata,
    Column("decision_id", String(32), primary_key=True),
    Column("experiment", String(128), nullable=False),
    Column("arm", String(128), nullable=False),
    Column("unit_hash", String(64), nullable=True, index=True),
    Column("path", Text, nullable=False),  # JSON list: the experiment's feature values, in order
    Column("segment", String(128), nullable=True),
    Column("reason", String(16), nullable=False),
    Column("propensity", Float, nullable=True),
    Column("snapshot_version", BigInteger, nullable=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("reward", Float, nullable=False, default=0.0),
    Column("outcomes", Integer, nullable=False, default=0),
    Index("ix_exposures_experiment_ts", "experiment", "ts_ms"),
)

# Outcomes, idempotent by event id; ``status`` says what became of each.
outcomes = Table(
    "outcomes",
    metadata,
    Column("event_id", String(128), primary_key=True),
    Column("decision_id", String(32), nullable=False, index=True),
    Column("experiment", String(128), nullable=False),
    Column("value", Float, nullable=False),
    Column("unit_hash", String(64), nullable=True, index=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # joined | late | pending | extra
    # Added in 0005: the reward this outcome added to its cell, and for one credited from its
    # decision token, the cell itself (JSON [path, arm, decision ts]): erasure takes back exactly
    # what was credited, even when the exposure never arrived.
    Column("credited", Float, nullable=True),
    Column("cell", Text, nullable=True),
)

stitches = Table(
    "stitches",
    metadata,
    Column("event_id", String(128), primary_key=True),
    # Unique since 0003: an anonymous id stitches to at most one user (the first), so export and
    # erasure can never walk user -> anonymous id -> another user.
    Column("anonymous_hash", String(64), nullable=False, index=True, unique=True),
    Column("user_hash", String(64), nullable=False, index=True),
    Column("ts_ms", BigInteger, nullable=False),
)

# Sufficient statistics per (experiment, feature path, arm), kept incrementally:
# raw sums, and sums decayed to ``ref_ms`` with the experiment's half-life.
stats = Table(
    "stats",
    metadata,
    Column("experiment", String(128), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("arm", String(128), primary_key=True),
    Column("exposures", Float, nullable=False, default=0.0),
    Column("reward", Float, nullable=False, default=0.0),
    Column("decayed_exposures", Float, nullable=False, default=0.0),
    Column("decayed_reward", Float, nullable=False, default=0.0),
    Column("ref_ms", BigInteger, nullable=False, default=0),
)

# Added in 0005: what ingestion appends instead of updating ``stats`` (control_plane.storage.stats): one row
# per (cell, hour) a commit touched, with raw sums and the decayed masses relative to ``hour_ms``.
# Reads sum ``stats`` and these; a rollup under the publish lock folds them into ``stats``.
stat_deltas = Table(
    "stat_deltas",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("experiment", String(128), nullable=False, index=True),
    Column("path", Text, nullable=False),
    Column("arm", String(128), nullable=False),
    Column("hour_ms", BigInteger, nullable=False),
    Column("exposures", Float, nullable=False),
    Column("reward", Float, nullable=False),
    Column("decayed_exposures", Float, nullable=False),
    Column("decayed_reward", Float, nullable=False),
    # Ids only grow, even after a rollup deletes every row (SQLite would reuse them): the
    # publisher's digest is the newest id (control_plane.storage.stats.data_mark).
    sqlite_autoincrement=True,
)

# What was counted rather than learnt: late outcomes, orphans joined later, extras.
counters = Table(
    "counters",
    metadata,
    Column("experiment", String(128), primary_key=True),
    Column("name", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False, default=0),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("experiment", String(128), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("kv_key", String(512), nullable=False),
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("digest", String(64), nullable=False),  # of the inputs: unchanged inputs are not republished
    Column("spec_version", Integer, nullable=False),
    # Added in 0002: the encoded snapshot (for the promotion gate and rollbacks) and a JSON
    # summary per segment {key, features, allocation, alpha, beta} for reports.
    Column("data", LargeBinary, nullable=True),
    Column("summary", Text, nullable=True),
    # Added in 0006: the summary's global segment allocation (JSON {arm: share}), so the report's
    # allocation history reads a few bytes per snapshot instead of a summary that grows with
    # segments x arms.
    Column("global_allocation", Text, nullable=True),
)

# Added in 0002: what operators must look at (e.g. a learnt snapshot the promotion gate held back).
alerts = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("experiment", String(128), nullable=False, index=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("message", Text, nullable=False),
    Column("details", Text, nullable=True),  # JSON
)

# Signatures of accepted event batches, for replay protection within the window.
seen_batches = Table(
    "seen_batches",
    metadata,
    Column("signature", String(64), primary_key=True),
    Column("ts", BigInteger, nullable=False, index=True),
)

# Added in 0004: dashboard sessions ended by logout before they expired (kept until then).
revoked_sessions = Table(
    "revoked_sessions",
    metadata,
    Column("nonce", String(32), primary_key=True),
    Column("expires_s", BigInteger, nullable=False, index=True),
)

# Added in 0007: behavioural signals (core.signals), one row per event id. ``seq`` orders them for
# the profile builder, which rebuilds only the visitors with signals past its watermark.
signals = Table(
    "signals",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("event_id", String(128), nullable=False, unique=True),
    Column("unit_hash", String(64), nullable=False, index=True),
    Column("tag", String(16), nullable=False),  # core.unit_tag: names the visitor's profile in KV
    Column("kind", String(16), nullable=False),
    Column("category", String(64), nullable=True),
    Column("value", Float, nullable=True),
    Column("name", String(64), nullable=True),
    Column("ts_ms", BigInteger, nullable=False),
    # Never reuse a number: after an erasure deleted the newest, a new signal would get a number
    # below the builder's watermark and never be read.
    sqlite_autoincrement=True,
)

# Added in 0007: attributes a site states about a visitor (PUT /v1/users/{id}/attributes).
user_attributes = Table(
    "user_attributes",
    metadata,
    Column("unit_hash", String(64), primary_key=True),
    Column("name", String(32), primary_key=True),
    Column("value", String(64), nullable=False),
    Column("tag", String(16), nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# Added in 0007: each visitor's computed profile (control_plane.profiles), and the digest of what
# KV holds for them: a cycle publishes the rows whose digest differs, and only those.
profiles = Table(
    "profiles",
    metadata,
    Column("unit_hash", String(64), primary_key=True),
    Column("tag", String(16), nullable=False),
    Column("doc", Text, nullable=False),  # JSON: scores, features, because, dnp
    Column("digest", String(64), nullable=False),
    Column("published_digest", String(64), nullable=True),
    Column("built_ms", BigInteger, nullable=False, index=True),  # the oldest are rebuilt first
    Column("dnp", Boolean, nullable=False, default=False),
    Column("cluster", String(16), nullable=True, index=True),  # the dashboard's table by cluster
    Column("due", Boolean, nullable=False, index=True),  # KV holds another digest (or nothing) yet
)

# Added in 0007: the profile builder's state (its watermark, the fitted clusters and bands), by name.
profile_state = Table(
    "profile_state",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", Text, nullable=False),
)
