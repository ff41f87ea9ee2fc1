"""A visitor's rights: see everything held about them, and have it erased.

Unit ids are only ever stored as keyed hashes, so both operations start by
hashing the id they are given.  The person is that id and, for a signed-in
user, every anonymous id stitched to them.  The walk only goes down, user ->
anonymous id, and an anonymous id stitches to at most one user (a unique
column), so it never reaches another user: one person's request can never touch
a stranger's data.  A request by an anonymous id covers that id alone (a
cookie does not prove who signed in from it); erase a signed-in person by
their user id.  The id sets stay in SQL
subqueries, so a user with any number of anonymous ids never hits a driver's
bind-parameter limit.  Erasure takes the person's exposures and rewards back
out of the sufficient statistics (with the same decay arithmetic that put them
in), so the next snapshot's posteriors are as if they had never been seen.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, delete, or_, select

from control_plane.experiments import ExperimentSpec
from control_plane.storage import stats
from control_plane.storage.schema import (
    experiments,
    exposures,
    outcomes,
    profiles,
    signals,
    stitches,
    user_attributes,
)
from control_plane.storage.store import Conflict, Store

__all__ = ["erase", "export", "profile_tags"]

_CHUNK = 500  # ids per IN (...): well under every driver's bind-parameter limit


class _Person:
    """The hashes of one person, as SQL: the given id and the anonymous ids stitched to it."""

    def __init__(self, conn: Connection, store: Store, unit: str) -> None:
        given = store.hash_unit(unit)
        assert given is not None
        self.given: str = given
        self.anonymous = select(stitches.c.anonymous_hash).where(stitches.c.user_hash == given)

    def owns(self, column: Any) -> Any:
        """A condition: ``column`` holds one of this person's hashes."""
        return or_(column == self.given, column.in_(self.anonymous))

    def stitch_rows(self) -> Any:
        return or_(stitches.c.user_hash == self.given, stitches.c.anonymous_hash == self.given)

    def hashes(self, conn: Connection) -> list[str]:
        return sorted({self.given, *conn.execute(self.anonymous).scalars()})


def _reachable(store: Store) -> None:
    if store.events_elsewhere:  # a chDB held by `perch consume`: its rows cannot be reached from here
        raise Conflict(
            f"a visitor's data cannot be exported or erased from this process: {store.events_elsewhere}"
        )


def export(store: Store, unit: str) -> dict[str, Any]:
    """Everything stored about ``unit`` (and ids stitched to it)."""
    _reachable(store)
    with store.engine.connect() as conn:
        person = _Person(conn, store, unit)
        hashes = person.hashes(conn)
        exposure_rows = conn.execute(
            select(exposures).where(person.owns(exposures.c.unit_hash)).order_by(exposures.c.ts_ms)
        ).all()
        theirs = select(exposures.c.decision_id).where(person.owns(exposures.c.unit_hash))
        outcome_rows = conn.execute(
            select(outcomes)
            .where(or_(person.owns(outcomes.c.unit_hash), outcomes.c.decision_id.in_(theirs)))
            .order_by(outcomes.c.ts_ms)
        ).all()
        stitch_rows = conn.execute(select(stitches).where(person.stitch_rows())).all()
        signal_rows = conn.execute(
            select(signals).where(person.owns(signals.c.unit_hash)).order_by(signals.c.ts_ms)
        ).all()
        attribute_rows = conn.execute(
            select(user_attributes).where(person.owns(user_attributes.c.unit_hash))
        ).all()
        profile_rows = conn.execute(
            select(profiles.c.unit_hash, profiles.c.doc, profiles.c.built_ms).where(
                person.owns(profiles.c.unit_hash)
            )
        ).all()

    def rows(result: Any) -> list[dict[str, Any]]:
        out = []
        for row in result:
            item = dict(row._mapping)
            if "path" in item:
                item["path"] = json.loads(item["path"])
            out.append(item)
        return out

    out: dict[str, Any] = {
        "unit_hashes": hashes,
        "exposures": rows(exposure_rows),
        "outcomes": rows(outcome_rows),
        "stitches": rows(stitch_rows),
        "signals": rows(signal_rows),
        "attributes": rows(attribute_rows),
        "profiles": [
            {"unit_hash": u, "built_ms": built, **json.loads(doc)} for u, doc, built in profile_rows
        ],
    }
    if store.events is not None:  # the events in ClickHouse (PERCH_EVENTS_URL)
        held = store.events.export(hashes)
        out["exposures"] += [{**e, "path": json.loads(str(e["path"]))} for e in held["exposures"]]
        out["outcomes"] += held["outcomes"]
    return out


def erase(store: Store, unit: str) -> dict[str, int]:
    """Delete ``unit``'s events and take their contribution out of the statistics, in one transaction
    (then, with events in ClickHouse, there too: control_plane.storage.clickhouse_events)."""
    _reachable(store)
    held, touched_there = {"exposures": 0, "outcomes": 0}, set[str]()
    if store.events is not None:
        # ClickHouse first, while the stitches that name the person's ids are still here: a retry
        # after a failure there walks the same ids (ClickHouse's erasure is idempotent).
        with store.engine.connect() as conn:
            hashes = _Person(conn, store, unit).hashes(conn)
        held, touched_there = store.events.erase(hashes)
    with store.ingest_write() as conn:
        person = _Person(conn, store, unit)
        rows = conn.execute(select(exposures).where(person.owns(exposures.c.unit_hash))).all()
        # Rewards credited from a decision token whose exposure never arrived: on their own cell.
        shown = select(exposures.c.decision_id).where(exposures.c.decision_id == outcomes.c.decision_id)
        orphans = conn.execute(
            select(outcomes.c.experiment, outcomes.c.cell, outcomes.c.credited).where(
                person.owns(outcomes.c.unit_hash), outcomes.c.cell.is_not(None), ~shown.exists()
            )
        ).all()
        half_lives = {
            key: ExperimentSpec.from_dict(json.loads(doc)).half_life_s
            for key, doc in conn.execute(
                select(experiments.c.key, experiments.c.spec).where(
                    experiments.c.key.in_({r.experiment for r in rows} | {o.experiment for o in orphans})
                )
            )
        }
        # Everything they added to a cell is appended back negated (control_plane.storage.stats): their
        # personalized exposures with the rewards credited to them, and the orphans' rewards.
        taken = [
            (row.experiment, row.path, row.arm, row.ts_ms, 1.0, row.reward)
            for row in rows
            if row.reason == "personalized"
        ]
        for experiment, cell, credited in orphans:
            path, arm, ts = json.loads(cell)
            taken.append((experiment, path, arm, ts, 0.0, credited or 0.0))
        touched = stats.subtract(conn, taken, half_lives)
        theirs = select(exposures.c.decision_id).where(person.owns(exposures.c.unit_hash))
        gone_outcomes = conn.execute(
            delete(outcomes).where(or_(person.owns(outcomes.c.unit_hash), outcomes.c.decision_id.in_(theirs)))
        ).rowcount
        gone_exposures = conn.execute(delete(exposures).where(person.owns(exposures.c.unit_hash))).rowcount
        # The profile layer's rows (its KV values go first: profile_tags, then the caller deletes them).
        gone_signals = conn.execute(delete(signals).where(person.owns(signals.c.unit_hash))).rowcount
        gone_attributes = conn.execute(
            delete(user_attributes).where(person.owns(user_attributes.c.unit_hash))
        ).rowcount
        conn.execute(delete(profiles).where(person.owns(profiles.c.unit_hash)))
        # Materialised first: the stitches define the person, so they go last and by event id.
        stitch_ids = list(conn.execute(select(stitches.c.event_id).where(person.stitch_rows())).scalars())
        gone_stitches = 0
        for start in range(0, len(stitch_ids), _CHUNK):
            gone_stitches += conn.execute(
                delete(stitches).where(stitches.c.event_id.in_(stitch_ids[start : start + _CHUNK]))
            ).rowcount
        # The appended deltas make the next cycle republish; the counter is the report's.
        for experiment in sorted(touched | touched_there):
            store.bump(conn, experiment, "erasures")
    return {
        "exposures": gone_exposures + held["exposures"],
        "outcomes": gone_outcomes + held["outcomes"],
        "stitches": gone_stitches,
        "signals": gone_signals,
        "attributes": gone_attributes,
    }


def profile_tags(store: Store, unit: str) -> list[str]:
    """The KV tags of the profiles held for ``unit`` (and ids stitched to it): delete their KV values
    (core.profile_key) before :func:`erase` removes what names them."""
    with store.engine.connect() as conn:
        person = _Person(conn, store, unit)
        return sorted(
            set(conn.execute(select(profiles.c.tag).where(person.owns(profiles.c.unit_hash))).scalars())
        )
