"""A visitor's rights over the ClickHouse event log: export, and erasure out of the cells too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from control_plane.storage.clickhouse import ClickHouseError, Executor, dedup_token, uuid_hex
from control_plane.storage.clickhouse_schema import Layout
from control_plane.storage.stats import HOUR_MS

__all__ = ["VisitorRights"]

_THEIRS = "unit_hash IN {h:Array(String)}"  # a person's rows: ``h`` holds their unit hashes


class VisitorRights:
    """Export and erasure of :class:`~control_plane.storage.clickhouse_events.EventLog`."""

    ch: Executor
    layout: Layout

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

    def erase(self, hashes: Sequence[str]) -> dict[str, int]:
        """Take these unit hashes' contribution out of the cells, then delete their rows.

        The negated deltas go first, with a token made of what they take back: a retry after a crash
        before the deletes sends the same block (dropped), and after the deletes finds nothing.
        The deletes are mutations; ``mutations_sync = 2`` waits until every replica has applied
        them, and the rows are counted again to check.
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
        taken: dict[tuple[str, str, str, int], list[float]] = {}
        for experiment, _, path, arm, ts, half_life in exposed:
            _negate(taken, (experiment, path, arm), int(ts), float(half_life), n=1.0, r=0.0)
        for experiment, _, path, arm, ts, half_life, reward in credited:
            _negate(taken, (experiment, path, arm), int(ts), float(half_life), n=0.0, r=float(reward))
        ids = [f"x{uuid_hex(r[1])}" for r in exposed] + [f"o{r[1]}" for r in credited]
        self.ch.insert(
            "stat_deltas",
            (
                "experiment",
                "path",
                "arm",
                "hour_ms",
                "exposures",
                "reward",
                "decayed_exposures",
                "decayed_reward",
            ),
            [(e, p, a, h, *v) for (e, p, a, h), v in sorted(taken.items())],
            token=dedup_token("erase", ids),
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
        return counts

    def _count(self, sql: str, params: Mapping[str, object]) -> int:
        return int(self.ch.rows(sql, params)[0][0])


def _negate(
    taken: dict[tuple[str, str, str, int], list[float]],
    cell: tuple[str, str, str],
    ts: int,
    half_life_s: float,
    *,
    n: float,
    r: float,
) -> None:
    """Add the negation of what one event put in its (experiment, path, arm) cell (the views'
    arithmetic, in Python)."""
    experiment, path, arm = cell
    hour = ts - ts % HOUR_MS
    weight = 2.0 ** ((ts - hour) / (half_life_s * 1000.0)) if half_life_s > 0 else 1.0
    row = taken.setdefault((experiment, path, arm, hour), [0.0, 0.0, 0.0, 0.0])
    row[0] -= n
    row[1] -= r
    row[2] -= n * weight
    row[3] -= r * weight
