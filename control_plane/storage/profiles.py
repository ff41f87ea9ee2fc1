"""The profile layer's tables: signals (written by ingestion), stated attributes, built profiles and
the builder's state. Reads and writes only; what a profile says is control_plane.profiles'.

Everything here is keyed by the unit's hash (``Store.hash_unit``); the ``tag``
(:func:`core.unit_tag`, under the edge secret) only names the visitor's profile in KV.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, func, select

from control_plane.storage import bulk
from control_plane.storage.schema import exposures, profile_state, profiles, signals, user_attributes
from control_plane.storage.store import Store

__all__ = [
    "DNP",
    "attributes_of",
    "changed_since",
    "clusters_table",
    "existing",
    "mark_published",
    "sample_docs",
    "save_profiles",
    "set_attributes",
    "set_state",
    "signals_of",
    "stale",
    "state",
    "units_with_data",
    "unpublished",
]

DNP = "do_not_personalize"  # a stated attribute of its own: "true" or "false", never a feature


def set_attributes(
    store: Store, unit: str, tag: str, values: Mapping[str, str | None], now_ms: int
) -> dict[str, str]:
    """Set (a value) or remove (None) ``unit``'s stated attributes; all of them afterwards.

    One change at a time (the ingest lock) and stamped later than any before it, so the builder's
    watermark (:func:`changed_since`) never passes a change that commits after it read."""
    unit_hash = store.hash_unit(unit)
    assert unit_hash is not None
    with store.ingest_write() as conn:
        now_ms = max(now_ms, int(state(conn, "attributes_clock", 0)) + 1)
        set_state(store, conn, "attributes_clock", now_ms)
        gone = [name for name, value in values.items() if value is None]
        if gone:
            conn.execute(
                delete(user_attributes).where(
                    user_attributes.c.unit_hash == unit_hash, user_attributes.c.name.in_(gone)
                )
            )
        for name, value in sorted(values.items()):
            if value is None:
                continue
            stmt = store.insert(user_attributes).values(
                unit_hash=unit_hash, name=name, value=value, tag=tag, updated_ms=now_ms
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["unit_hash", "name"],
                    set_={"value": value, "tag": tag, "updated_ms": now_ms},
                )
            )
        # A removal may leave nothing for the watermark to notice: the profile is rebuilt all the same.
        conn.execute(profiles.update().where(profiles.c.unit_hash == unit_hash).values(built_ms=0))
        return attributes_of(conn, [unit_hash]).get(unit_hash, {})


def attributes_of(conn: Connection, unit_hashes: Sequence[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for part in bulk.parts(conn, list(unit_hashes)):
        rows = conn.execute(
            select(user_attributes.c.unit_hash, user_attributes.c.name, user_attributes.c.value).where(
                bulk.member(conn, user_attributes.c.unit_hash, part)
            )
        )
        for unit_hash, name, value in rows:
            out.setdefault(unit_hash, {})[name] = value
    return out


def changed_since(
    conn: Connection, after_seq: int, after_ms: int, limit: int
) -> tuple[dict[str, str], int, int]:
    """Units with signals past ``after_seq`` or attributes set since ``after_ms``, at most ``limit``
    of them: {unit hash: tag}, and the new watermarks (as far as the units returned reach).

    Signals are numbered as ingestion commits them (one ingest transaction at a time, on
    PostgreSQL too: Store.ingest_write; numbers are never reused), so no lower number can appear
    later; attribute changes are stamped the same way (:func:`set_attributes`)."""
    rows = conn.execute(
        select(signals.c.seq, signals.c.unit_hash, signals.c.tag)
        .where(signals.c.seq > after_seq)
        .order_by(signals.c.seq)
        .limit(limit * 20)  # several signals per visitor in a cycle's window
    ).all()
    units: dict[str, str] = {}
    seq = after_seq
    for s, unit_hash, tag in rows:
        if unit_hash not in units and len(units) >= limit:
            break
        units[unit_hash] = tag
        seq = s
    stated = conn.execute(
        select(user_attributes.c.unit_hash, user_attributes.c.tag, func.max(user_attributes.c.updated_ms))
        .where(user_attributes.c.updated_ms > after_ms)
        .group_by(user_attributes.c.unit_hash, user_attributes.c.tag)
        .order_by(func.max(user_attributes.c.updated_ms))
        .limit(limit)
    ).all()
    ms = after_ms
    for unit_hash, tag, updated in stated:
        units.setdefault(unit_hash, tag)
        ms = max(ms, int(updated))
    return units, seq, ms


def stale(conn: Connection, built_before_ms: int, limit: int) -> dict[str, str]:
    """Profiles built before ``built_before_ms`` (recency and churn move with time alone)."""
    rows = conn.execute(
        select(profiles.c.unit_hash, profiles.c.tag)
        .where(profiles.c.built_ms < built_before_ms)
        .order_by(profiles.c.built_ms)
        .limit(limit)
    )
    return {unit_hash: tag for unit_hash, tag in rows}


def signals_of(
    conn: Connection, unit_hashes: Sequence[str], since_ms: int, per_unit: int
) -> dict[str, list[tuple[int, str, str | None, float | None]]]:
    """Each unit's signals since ``since_ms``, newest ``per_unit`` at most: (ts, kind, category, value).
    The bound is the database's (a window function): one visitor's millions of signals are never read."""
    out: dict[str, list[tuple[int, str, str | None, float | None]]] = {}
    for part in bulk.parts(conn, list(unit_hashes)):
        ranked = (
            select(
                signals.c.unit_hash,
                signals.c.ts_ms,
                signals.c.kind,
                signals.c.category,
                signals.c.value,
                func.row_number()
                .over(
                    partition_by=signals.c.unit_hash, order_by=(signals.c.ts_ms.desc(), signals.c.seq.desc())
                )
                .label("n"),
            )
            .where(bulk.member(conn, signals.c.unit_hash, part), signals.c.ts_ms >= since_ms)
            .subquery()
        )
        rows = conn.execute(
            select(
                ranked.c.unit_hash, ranked.c.ts_ms, ranked.c.kind, ranked.c.category, ranked.c.value
            ).where(ranked.c.n <= per_unit)
        )
        for unit_hash, ts, kind, category, value in rows:
            out.setdefault(unit_hash, []).append(
                (int(ts), kind, category, None if value is None else float(value))
            )
    return out


def save_profiles(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert or replace profiles (unit_hash, tag, doc, digest, built_ms, dnp, cluster), in bulk; how
    many changed what KV should hold (those become ``due``)."""
    if not rows:
        return 0
    old: dict[str, str] = {}
    for part in bulk.parts(conn, [r["unit_hash"] for r in rows]):
        found = conn.execute(
            select(profiles.c.unit_hash, profiles.c.digest).where(
                bulk.member(conn, profiles.c.unit_hash, part)
            )
        )
        old.update({u: d for u, d in found})
    new = [{**r, "published_digest": None, "due": True} for r in rows if r["unit_hash"] not in old]
    kept = [{**r, "due": r["digest"] != old[r["unit_hash"]]} for r in rows if r["unit_hash"] in old]
    bulk.insert_rows(conn, profiles, new)
    # Only what changed becomes due; a profile already due (not yet published) stays so.
    changed = [r for r in kept if r["due"]]
    same = [{k: v for k, v in r.items() if k != "due"} for r in kept if not r["due"]]
    bulk.update_rows(conn, profiles, "unit_hash", changed)
    bulk.update_rows(conn, profiles, "unit_hash", same)
    return len(new) + len(changed)


def unpublished(conn: Connection, limit: int) -> list[tuple[str, str, str, str]]:
    """(unit hash, tag, doc, digest) of profiles whose KV value is missing or older (by an index:
    a cycle with nothing to publish reads nothing)."""
    rows = conn.execute(
        select(profiles.c.unit_hash, profiles.c.tag, profiles.c.doc, profiles.c.digest)
        .where(profiles.c.due.is_(True))
        .limit(limit)
    )
    return [(u, t, d, g) for u, t, d, g in rows]


def mark_published(conn: Connection, done: Sequence[tuple[str, str]]) -> None:
    """Record what KV now holds: (unit hash, digest) pairs (a profile rebuilt meanwhile stays due)."""
    if done:
        conn.execute(
            profiles.update()
            .where(and_(profiles.c.unit_hash == bindparam("u"), profiles.c.digest == bindparam("d")))
            .values(published_digest=bindparam("d"), due=False),
            [{"u": u, "d": d} for u, d in done],
        )


def state(conn: Connection, name: str, default: Any) -> Any:
    raw = conn.execute(select(profile_state.c.value).where(profile_state.c.name == name)).scalar()
    return default if raw is None else json.loads(raw)


def set_state(store: Store, conn: Connection, name: str, value: Any) -> None:
    stmt = store.insert(profile_state).values(name=name, value=json.dumps(value))
    conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_={"value": stmt.excluded.value}))


def sample_docs(conn: Connection, limit: int) -> list[str]:
    """Up to ``limit`` profile documents; unit hashes are keyed hashes, so their order is a fair sample."""
    return list(conn.execute(select(profiles.c.doc).order_by(profiles.c.unit_hash).limit(limit)).scalars())


def clusters_table(
    conn: Connection, experiment: str
) -> tuple[dict[str, int], dict[tuple[str, str], tuple[int, float]]]:
    """Profiles per cluster, and per (cluster, arm) the experiment's personalized exposures and
    their rewards, by each visitor's cluster now (the dashboard's table; SQL-held events only)."""
    sizes = {
        str(c): int(n)
        for c, n in conn.execute(
            select(profiles.c.cluster, func.count())
            .where(profiles.c.cluster.is_not(None))
            .group_by(profiles.c.cluster)
        )
    }
    rows = conn.execute(
        select(profiles.c.cluster, exposures.c.arm, func.count(), func.sum(exposures.c.reward))
        .select_from(exposures.join(profiles, profiles.c.unit_hash == exposures.c.unit_hash))
        .where(
            exposures.c.experiment == experiment,
            exposures.c.reason == "personalized",
            profiles.c.cluster.is_not(None),
        )
        .group_by(profiles.c.cluster, exposures.c.arm)
    )
    return sizes, {(str(c), str(a)): (int(n), float(r or 0.0)) for c, a, n, r in rows}


def units_with_data(conn: Connection, unit_hashes: Sequence[str]) -> set[str]:
    """Which of ``unit_hashes`` still have signals or stated attributes (an erased one has neither)."""
    out: set[str] = set()
    for part in bulk.parts(conn, list(unit_hashes)):
        for table in (signals, user_attributes):
            out.update(
                conn.execute(
                    select(table.c.unit_hash).distinct().where(bulk.member(conn, table.c.unit_hash, part))
                ).scalars()
            )
    return out


def existing(conn: Connection, unit_hashes: Sequence[str]) -> set[str]:
    """Which of ``unit_hashes`` have a profile row."""
    out: set[str] = set()
    for part in bulk.parts(conn, list(unit_hashes)):
        out.update(
            conn.execute(
                select(profiles.c.unit_hash).where(bulk.member(conn, profiles.c.unit_hash, part))
            ).scalars()
        )
    return out
