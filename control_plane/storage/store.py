"""The control plane's database: experiments, their statistics, dashboard sessions.

``Store`` is the one object callers hold. Its parts live beside it: snapshots, alerts and the
publish lock in :mod:`control_plane.storage.snapshots` (``SnapshotStore``, which it extends);
the engine, write transactions and migrations in :mod:`control_plane.storage.database`. Event
ingestion lives in :mod:`control_plane.events.ingest`, on top of this store.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, case, func, select
from sqlalchemy.exc import IntegrityError

from control_plane.experiments import ExperimentError, ExperimentSpec
from control_plane.propensity import PropensityCache
from control_plane.storage import stats
from control_plane.storage.database import engine_for
from control_plane.storage.schema import (
    audit,
    counters,
    experiments,
    exposures,
    outcomes,
    revoked_sessions,
)
from control_plane.storage.snapshots import SnapshotMeta, SnapshotStore, publish_lock_key
from control_plane.storage.stats import CellStats
from core import PerchError

if TYPE_CHECKING:
    from control_plane.storage.clickhouse_events import EventLog

__all__ = ["Conflict", "ExperimentRecord", "NotFound", "SnapshotMeta", "Store", "publish_lock_key"]

# An exposure may follow its outcome by a little (edges send on their own schedules).
EXPIRY_GRACE_MS = 3_600_000
MAX_WINDOW_MS = 90 * 86_400_000  # the longest reward window an experiment may have


class NotFound(PerchError, LookupError):
    pass


class Conflict(PerchError, ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ExperimentRecord:
    spec: ExperimentSpec
    version: int
    archived: bool
    created_ms: int
    updated_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.spec.to_dict(),
            "version": self.version,
            "archived": self.archived,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
        }


class Store(SnapshotStore):
    """Experiments, their statistics and sessions here; snapshots in SnapshotStore; the engine and
    its write transactions in Database."""

    def __init__(self, engine: Engine, unit_key: str, events: EventLog | None = None) -> None:
        super().__init__(engine)
        self.unit_key = unit_key.encode()
        # With ClickHouse holding the events (PERCH_EVENTS_URL), the learner's cells come from there.
        self.events = events
        # Set when the events are in a chDB another process holds (`perch consume --publish` learns
        # there): learning here would publish a snapshot of nothing, so it is refused with this.
        self.events_elsewhere: str | None = None
        # Ingestion's per-batch shortcuts: specs parsed once per (key, version), and
        # expired replay signatures purged once a minute rather than on every batch.
        self.parsed_specs: dict[str, tuple[int, ExperimentSpec]] = {}
        self.replays_purged_s = 0
        # The live experiment keys this process last wrote to KV's index (publish.publish_index).
        self.published_live: frozenset[str] | None = None
        # Contextual exposures arrive without a propensity: ingestion computes it from the
        # snapshot that decided (SnapshotStore.snapshot_at) and caches it per context.
        self.propensities = PropensityCache(size=32_768)

    @classmethod
    def from_url(cls, url: str, unit_key: str, events: EventLog | None = None) -> Store:
        return cls(engine_for(url), unit_key, events)

    def hash_unit(self, unit: str | None) -> str | None:
        """Units are stored keyed, never raw (a salted HMAC, 128 bits)."""
        if unit is None:
            return None
        # hmac.digest: the one-shot C path, a third of hmac.new's cost (one per ingested event).
        return hmac.digest(self.unit_key, unit.encode(), "sha256").hex()[:32]

    # --- experiments -------------------------------------------------------------------------

    def _record(self, row: Any) -> ExperimentRecord:
        spec = ExperimentSpec.from_dict(json.loads(row.spec))
        return ExperimentRecord(spec, row.version, bool(row.archived), row.created_ms, row.updated_ms)

    def get_experiment(self, key: str) -> ExperimentRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(experiments).where(experiments.c.key == key)).first()
        return self._record(row) if row else None

    def list_experiments(self, include_archived: bool = False) -> list[ExperimentRecord]:
        query = select(experiments).order_by(experiments.c.key)
        if not include_archived:
            query = query.where(experiments.c.archived.is_(False))
        with self.engine.connect() as conn:
            return [self._record(row) for row in conn.execute(query)]

    def _audit(self, conn: Connection, spec: ExperimentSpec, version: int, action: str, now_ms: int) -> None:
        conn.execute(
            audit.insert().values(
                experiment=spec.key,
                version=version,
                action=action,
                spec=json.dumps(spec.to_dict(), sort_keys=True),
                at_ms=now_ms,
            )
        )

    def create_experiment(self, spec: ExperimentSpec, now_ms: int) -> ExperimentRecord:
        doc = json.dumps(spec.to_dict(), sort_keys=True)
        try:
            with self.write() as conn:
                conn.execute(
                    experiments.insert().values(
                        key=spec.key,
                        spec=doc,
                        version=1,
                        archived=False,
                        created_ms=now_ms,
                        updated_ms=now_ms,
                    )
                )
                self._audit(conn, spec, 1, "create", now_ms)
        except IntegrityError:
            recreated = self._recreate(spec, doc, now_ms)
            if recreated is None:
                raise Conflict(f"experiment {spec.key!r} exists; PATCH it instead") from None
            return recreated
        return ExperimentRecord(spec, 1, False, now_ms, now_ms)

    def _recreate(self, spec: ExperimentSpec, doc: str, now_ms: int) -> ExperimentRecord | None:
        """Creating an archived key brings it back as its next version, with the new definition.

        Its history stays (audit, snapshots, events): statistics carry over where arms and
        features match, and cells that no longer fit are skipped and counted by the learner. A
        clean slate is a new key. None if the key is live.
        """
        with self.write() as conn:
            row = conn.execute(
                select(experiments).where(experiments.c.key == spec.key).with_for_update()
            ).first()
            if row is None or not row.archived:
                return None
            version = row.version + 1
            conn.execute(
                experiments.update()
                .where(experiments.c.key == spec.key)
                .values(spec=doc, version=version, archived=False, updated_ms=now_ms)
            )
            self._audit(conn, spec, version, "recreate", now_ms)
        self.parsed_specs.pop(spec.key, None)
        return ExperimentRecord(spec, version, False, row.created_ms, now_ms)

    # Fixed at creation: changing them would reshuffle visitors or orphan statistics.
    IMMUTABLE = ("key", "salt", "features")

    def update_experiment(
        self, key: str, changes: Mapping[str, Any], now_ms: int, expected_version: int | None = None
    ) -> ExperimentRecord:
        with self.write() as conn:
            row = conn.execute(select(experiments).where(experiments.c.key == key).with_for_update()).first()
            if row is None or row.archived:
                raise NotFound(f"no experiment {key!r}")
            if expected_version is not None and row.version != expected_version:
                raise Conflict(f"experiment {key!r} is at version {row.version}, not {expected_version}")
            current = json.loads(row.spec)
            if "arms" in changes and not isinstance(changes["arms"], list):
                raise ExperimentError("arms must be a list of {key, payload?, html?} objects")
            for name in self.IMMUTABLE:
                if name in changes and changes[name] != current.get(name):
                    raise ExperimentError(f"{name} cannot change after creation (create a new experiment)")
            removed = {a["key"] for a in current["arms"]} - {
                a.get("key") for a in changes.get("arms", current["arms"]) if isinstance(a, Mapping)
            }
            if removed:
                raise ExperimentError(
                    f"arms {sorted(removed)} cannot be removed (their data would be orphaned)"
                )
            if "ranking" in changes and (changes["ranking"] is None) != (current.get("ranking") is None):
                raise ExperimentError(
                    "ranking cannot be added or removed after creation: a list and a single decision "
                    "are different experiments (create a new one)"
                )
            merged = {**current, **changes}
            if isinstance(changes.get("ranking"), Mapping) and isinstance(current.get("ranking"), Mapping):
                # One level deep: PATCH {"ranking": {"slots": 3}} keeps the groups and the floors.
                merged["ranking"] = {**current["ranking"], **changes["ranking"]}
            ranking, arms = merged.get("ranking"), changes.get("arms")
            if (
                isinstance(ranking, Mapping)
                and isinstance(arms, list)
                and isinstance(ranking.get("groups"), Mapping)
            ):
                # A group given on a PATCHed item replaces the one stored for it.
                regrouped = {a.get("key") for a in arms if isinstance(a, Mapping) and "group" in a}
                kept = {k: v for k, v in ranking["groups"].items() if k not in regrouped}
                merged["ranking"] = {**ranking, "groups": kept}
            spec = ExperimentSpec.from_dict(merged)
            version = row.version + 1
            conn.execute(
                experiments.update()
                .where(experiments.c.key == key)
                .values(spec=json.dumps(spec.to_dict(), sort_keys=True), version=version, updated_ms=now_ms)
            )
            self._audit(conn, spec, version, "update", now_ms)
        return ExperimentRecord(spec, version, False, row.created_ms, now_ms)

    def archive_experiment(self, key: str, now_ms: int) -> ExperimentRecord:
        """DELETE keeps the data (events, statistics, history); the experiment stops being published."""
        with self.write() as conn:
            row = conn.execute(select(experiments).where(experiments.c.key == key)).first()
            if row is None or row.archived:
                raise NotFound(f"no experiment {key!r}")
            record = self._record(row)
            conn.execute(
                experiments.update()
                .where(experiments.c.key == key)
                .values(archived=True, version=row.version + 1, updated_ms=now_ms)
            )
            self._audit(conn, record.spec, row.version + 1, "archive", now_ms)
        return ExperimentRecord(record.spec, row.version + 1, True, row.created_ms, now_ms)

    def history(self, key: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(audit).where(audit.c.experiment == key).order_by(audit.c.id))
            return [
                {"version": r.version, "action": r.action, "at_ms": r.at_ms, "spec": json.loads(r.spec)}
                for r in rows
            ]

    # --- statistics --------------------------------------------------------------------------

    def bump(self, conn: Connection, experiment: str, name: str, by: int = 1) -> None:
        stmt = self.insert(counters).values(experiment=experiment, name=name, value=by)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["experiment", "name"], set_={"value": counters.c.value + by}
            )
        )

    def counters(self, experiment: str) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(counters.c.name, counters.c.value).where(counters.c.experiment == experiment)
            )
            return {name: int(value) for name, value in rows}

    def outcome_statuses(self, experiment: str) -> dict[str, int]:
        """Outcomes by what became of them; ``pending`` ones are orphans so far."""
        if self.events is not None:
            return self.events.outcome_statuses(experiment)
        query = (
            select(outcomes.c.status, func.count())
            .where(outcomes.c.experiment == experiment)
            .group_by(outcomes.c.status)
        )
        with self.engine.connect() as conn:
            return {status: int(count) for status, count in conn.execute(query)}

    def cells(self, spec: ExperimentSpec, now_ms: int) -> dict[tuple[str, ...], dict[str, CellStats]]:
        """The learner's input: every (path, arm) cell, decayed to ``now_ms`` (see ``stats.cells``)."""
        if self.events is not None:
            return self.events.cells(spec.key, spec.half_life_s, now_ms)
        if self.events_elsewhere:
            raise Conflict(self.events_elsewhere)
        with self.engine.connect() as conn:
            return stats.cells(conn, spec.key, spec.half_life_s, now_ms)

    def data_mark(self, experiment: str) -> int:
        """Changes whenever the experiment's statistics do (the publisher's digest)."""
        if self.events is not None:
            return self.events.data_mark(experiment)
        with self.engine.connect() as conn:
            return stats.data_mark(conn, experiment)

    def rollup(self, spec: ExperimentSpec) -> int:
        """Fold the experiment's appended deltas into its base statistics (hold its publish lock)."""
        with self.write() as conn:
            return stats.rollup(conn, spec.key, spec.half_life_s, upsert=self.insert)

    def expire_pending(self, now_ms: int) -> int:
        """Delete outcomes still waiting for their exposure past the reward window; how many.

        An exposure arriving after its outcome's window could only make it ``late``, so a pending
        outcome that old can never be learnt from; kept, they would only fill the database. Each
        experiment counts its own in ``expired_outcomes``. Outcomes of experiments the store does
        not know wait the longest window an experiment may have.
        """
        windows = {r.spec.key: r.spec.reward.window_s for r in self.list_experiments(include_archived=True)}
        if self.events is not None:
            # Outcomes of unknown experiments are never stored there (control_plane.events.clickhouse_sink).
            cutoffs = {key: now_ms - window_s * 1000 - EXPIRY_GRACE_MS for key, window_s in windows.items()}
            expired = self.events.expire_pending(cutoffs)
            if expired:
                with self.write() as conn:
                    for key, gone in sorted(expired.items()):
                        self.bump(conn, key, "expired_outcomes", gone)
            return sum(expired.values())
        pending = (outcomes.c.status == "pending") & (
            outcomes.c.ts_ms < now_ms - MAX_WINDOW_MS - EXPIRY_GRACE_MS
        )
        total = 0
        with self.ingest_write() as conn:
            for key, window_s in sorted(windows.items()):
                cutoff = now_ms - window_s * 1000 - EXPIRY_GRACE_MS
                gone = conn.execute(
                    outcomes.delete().where(
                        outcomes.c.experiment == key,
                        outcomes.c.status == "pending",
                        outcomes.c.ts_ms < cutoff,
                    )
                ).rowcount
                if gone:
                    self.bump(conn, key, "expired_outcomes", gone)
                total += gone
            total += conn.execute(
                outcomes.delete().where(pending, outcomes.c.experiment.not_in(list(windows) or [""]))
            ).rowcount
        return total

    def units_per_path(self, experiment: str) -> dict[tuple[str, ...], int]:
        """Distinct (hashed) visitors per full feature path among personalized exposures."""
        if self.events is not None:
            return self.events.units_per_path(experiment)
        query = (
            select(exposures.c.path, func.count(func.distinct(exposures.c.unit_hash)))
            .where(
                exposures.c.experiment == experiment,
                exposures.c.reason == "personalized",
                exposures.c.unit_hash.is_not(None),
            )
            .group_by(exposures.c.path)
        )
        with self.engine.connect() as conn:
            return {tuple(json.loads(path)): int(n) for path, n in conn.execute(query)}

    def position_clicks(self, experiment: str, since_ms: int) -> dict[tuple[str, str, int], tuple[int, int]]:
        """(item, context path, position) -> (shown, rewarded) of a ranked experiment's personalized
        positions since ``since_ms``; the position is the last two hex digits of the decision id
        (core.ranking)."""
        if self.events is not None:
            return self.events.position_clicks(experiment, since_ms)
        position = func.substr(exposures.c.decision_id, 31, 2)
        query = (
            select(
                exposures.c.arm,
                exposures.c.path,
                position,
                func.count(),
                func.sum(case((exposures.c.reward > 0, 1), else_=0)),
            )
            .where(
                exposures.c.experiment == experiment,
                exposures.c.reason == "personalized",
                exposures.c.ts_ms >= since_ms,
            )
            .group_by(exposures.c.arm, exposures.c.path, position)
        )
        with self.engine.connect() as conn:
            return {
                (arm, path, int(pos, 16)): (int(n), int(c or 0))
                for arm, path, pos, n, c in conn.execute(query)
            }

    def exposures_per_segment(
        self, experiment: str, since_ms: int, until_ms: int
    ) -> dict[tuple[str, str], int]:
        """Personalized exposures per (serving segment, arm) stamped in [since_ms, until_ms): a ranked
        item's progress to its floor in each segment."""
        if self.events is not None:
            return self.events.exposures_per_segment(experiment, since_ms, until_ms)
        query = (
            select(exposures.c.segment, exposures.c.arm, func.count())
            .where(
                exposures.c.experiment == experiment,
                exposures.c.reason == "personalized",
                exposures.c.ts_ms >= since_ms,
                exposures.c.ts_ms < until_ms,
            )
            .group_by(exposures.c.segment, exposures.c.arm)
        )
        with self.engine.connect() as conn:
            return {(segment or "", arm): int(n) for segment, arm, n in conn.execute(query)}

    # --- dashboard sessions ------------------------------------------------------------------

    def revoke_session(self, nonce: str, expires_s: int, now_s: int) -> None:
        """Remember a logged-out session until it would have expired (and forget expired ones)."""
        with self.write() as conn:
            conn.execute(revoked_sessions.delete().where(revoked_sessions.c.expires_s < now_s))
            conn.execute(
                self.insert(revoked_sessions)
                .values(nonce=nonce, expires_s=expires_s)
                .on_conflict_do_nothing()
            )

    def session_revoked(self, nonce: str) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(select(revoked_sessions.c.nonce).where(revoked_sessions.c.nonce == nonce))
            return found.first() is not None
