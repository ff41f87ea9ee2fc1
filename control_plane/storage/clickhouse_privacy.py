"""A visitor's rights over the ClickHouse event log: export, and erasure out of the cells too."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from control_plane.storage.clickhouse import ClickHouseError, Executor, dedup_token, uuid_hex
from control_plane.storage.clickhouse_schema import Layout

__all__ = ["VisitorRights"]

_THEIRS = "unit_hash IN {h:Array(String)}"  # a person's rows: ``h`` holds their unit hashes
_ERASURE_COLUMNS = ("experiment", "id", "path", "arm", "ts_ms", "half_life_s", "exposures", "reward")


class VisitorRights:
    """Export and erasure of :class:`~control_plane.storage.clickhouse_events.EventLog`."""

    ch: Executor
    layout: Layout
    # EventLog's: which (experiment, id) keys a table holds already.
    _stored: Callable[[str, str, str, set[tuple[str, str]]], set[tuple[str, str]]]

    def export(self, hashes: Sequence[str]) -> dict[str, list[dict[str, object]]]:
        """Every exposure and outcome of these unit hashes (and the outcomes of their decisions)."""
        x, o = self.layout.table("exposures"), self.layout.table("outcomes")
        params = {"h": list(hashes)}
        names = ("experiment", "decision_id", "arm", "path", "segment", "reason", "propensity", "ts_ms")
        exposures = [
            dict(zip(names, (*r[:1], uuid_hex(r[1]), *r[2:]), strict=True))
            for r in self.ch.rows(
                f"SELECT {', '.join(names)} FROM {x} FINAL WHERE {_THEIRS} ORDER BY ts_ms",
                params,
            )
        ]
        onames = ("experiment", "decision_id", "event_id", "value", "ts_ms", "status", "credited")
        outcomes = [
            dict(zip(onames, (*r[:1], uuid_hex(r[1]), *r[2:]), strict=True))
            for r in self.ch.rows(
                f"SELECT {', '.join(onames)} FROM {o} FINAL WHERE {_THEIRS} "
                f"OR decision_id IN (SELECT decision_id FROM {x} WHERE {_THEIRS}) "
                "ORDER BY ts_ms",
                params,
            )
        ]
        return {"exposures": exposures, "outcomes": outcomes}

    def erase(self, hashes: Sequence[str]) -> tuple[dict[str, int], set[str]]:
        """Take these unit hashes' contribution out of the cells, then delete their rows; the rows
        deleted per table, and the experiments whose cells changed.

        Each erased event gets a row in ``erasures`` first (exposures as ``x<decision>``, credited
        outcomes as ``o<event>``), whose view appends its negation to the cells; an event already
        there is skipped. So a retry, after a crash or a refused delete and whatever arrived
        meanwhile, negates each event once. The deletes are mutations; ``mutations_sync = 2`` waits
        until every replica has applied them, and the rows are counted again to check.
        """
        x, o, db = self.layout.table("exposures"), self.layout.table("outcomes"), self.layout.database
        params = {"h": list(hashes)}
        theirs = f"SELECT decision_id FROM {x} WHERE {_THEIRS}"
        exposed = self.ch.rows(
            f"SELECT experiment, decision_id, path, arm, ts_ms, half_life_s FROM {x} FINAL "
            f"WHERE {_THEIRS} AND reason = 'personalized'",
            params,
        )
        credited = self.ch.rows(
            f"SELECT experiment, event_id, path, arm, decision_ts_ms, half_life_s, credited FROM {o} FINAL "
            f"WHERE ({_THEIRS} OR decision_id IN ({theirs})) AND credited > 0 AND counted = 1",
            params,
        )
        rows = [(e, f"x{uuid_hex(d)}", p, a, int(t), float(h), 1.0, 0.0) for e, d, p, a, t, h in exposed]
        rows += [(e, f"o{i}", p, a, int(t), float(h), 0.0, float(r)) for e, i, p, a, t, h, r in credited]
        # Found again by a retry (the rows stay until their delete succeeds), so counted then too.
        touched = {r[0] for r in rows}
        done = self._stored("erasures", "id", "String", {(r[0], r[1]) for r in rows})
        rows = [r for r in rows if (r[0], r[1]) not in done]
        self.ch.insert(
            "erasures", _ERASURE_COLUMNS, rows, token=dedup_token("erase", (f"{r[0]}/{r[1]}" for r in rows))
        )
        counts = {
            "exposures": self._count(f"SELECT count() FROM {x} FINAL WHERE {_THEIRS}", params),
            "outcomes": self._count(
                f"SELECT count() FROM {o} FINAL WHERE {_THEIRS} OR decision_id IN ({theirs})",
                params,
            ),
        }
        on = f" ON CLUSTER `{self.layout.cluster}`" if self.layout.cluster else ""
        # Outcomes first: their condition reads the exposures still there.
        self.ch.command(
            f"ALTER TABLE `{db}`.`outcomes`{on} DELETE WHERE {_THEIRS} "
            f"OR decision_id IN (SELECT decision_id FROM `{db}`.`exposures` WHERE {_THEIRS}) "
            "SETTINGS mutations_sync = 2",
            params,
        )
        self.ch.command(
            f"ALTER TABLE `{db}`.`exposures`{on} DELETE WHERE {_THEIRS} SETTINGS mutations_sync = 2",
            params,
        )
        left = self._count(f"SELECT count() FROM {x} WHERE {_THEIRS}", params)
        left += self._count(f"SELECT count() FROM {o} WHERE {_THEIRS}", params)
        if left:
            raise ClickHouseError(f"erasure incomplete: {left} rows still there after the mutations finished")
        return counts, touched

    def _count(self, sql: str, params: Mapping[str, object]) -> int:
        return int(self.ch.rows(sql, params)[0][0])
