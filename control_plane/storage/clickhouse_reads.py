"""Reading the ClickHouse event log: the learner's cells and digest, the report's sums, checks.

Reads group the ``SummingMergeTree`` deltas by cell and hour (parts not yet merged still hold
several rows per key) and decay them as control_plane.storage.stats does; row-level reads use
``FINAL`` or group by id, since a ``ReplacingMergeTree`` row may be there twice until parts merge.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence

from control_plane.storage.clickhouse import ClickHouseError, Executor
from control_plane.storage.clickhouse_schema import Layout
from control_plane.storage.stats import CellStats, Totals

__all__ = ["EventReads"]


class EventReads:
    """The reads of :class:`~control_plane.storage.clickhouse_events.EventLog`."""

    ch: Executor
    layout: Layout

    def cells(
        self, experiment: str, half_life_s: float | None, now_ms: int
    ) -> dict[tuple[str, ...], dict[str, CellStats]]:
        """The learner's input, as control_plane.storage.stats.cells gives it from SQL."""
        half_life_ms = half_life_s * 1000.0 if half_life_s else 0.0
        rows = self.ch.rows(
            "SELECT path, arm, hour_ms, sum(decayed_exposures), sum(decayed_reward) "
            f"FROM {self.layout.table('stat_deltas')} WHERE experiment = {{e:String}} "
            "GROUP BY path, arm, hour_ms",
            {"e": experiment},
        )
        sums: dict[tuple[str, str], list[float]] = {}
        for path, arm, hour, mass_n, mass_r in rows:
            factor = 2.0 ** ((hour - now_ms) / half_life_ms) if half_life_ms and now_ms > hour else 1.0
            cell = sums.setdefault((path, arm), [0.0, 0.0])
            cell[0] += mass_n * factor
            cell[1] += mass_r * factor
        out: dict[tuple[str, ...], dict[str, CellStats]] = {}
        for (path, arm), (n, r) in sums.items():
            kept = n if n > 0.0 else 0.0
            out.setdefault(tuple(json.loads(path)), {})[arm] = CellStats(kept, min(max(r, 0.0), kept))
        return out

    def exposure_sums(
        self, experiment: str, by: Sequence[str], segments: Sequence[str] | None = None
    ) -> dict[tuple[object, ...], tuple[int, float, float, int]]:
        """Per ``by`` group (of segment, reason, arm) of personalized and holdout exposures: count,
        sum of rewards, sum of squared rewards, conversions; what the report reads from SQL."""
        if not set(by) <= {"segment", "reason", "arm"}:
            raise ClickHouseError(f"exposure_sums by {list(by)}: only segment, reason and arm")
        x = self.layout.table("exposures")
        # Aliases that shadow no column: ClickHouse would read them in WHERE too.
        keys = ", ".join(f"x_{name}" for name in by)
        only = " AND segment IN {s:Array(String)}" if segments is not None else ""
        rows = self.ch.rows(
            f"SELECT {keys}, count(), sum(r), sum(r * r), countIf(r > 0) FROM ("
            "SELECT decision_id, any(segment) AS x_segment, any(reason) AS x_reason, any(arm) AS x_arm "
            f"FROM {x} "
            "WHERE experiment = {e:String} AND reason IN ('personalized', 'holdout')" + only + " "
            f"GROUP BY decision_id) AS x LEFT JOIN ({self._credits()}) AS o USING (decision_id) "
            f"GROUP BY {keys}",
            {"e": experiment, "s": list(segments or ())},
        )
        k = len(by)
        return {tuple(r[:k]): (int(r[k]), float(r[k + 1]), float(r[k + 2]), int(r[k + 3])) for r in rows}

    def _credits(self) -> str:
        """Per decision of experiment ``{e}``, the reward its outcomes credited (``r``): each outcome
        once, at its newest version (a pending one credited later is stored twice)."""
        return (
            "SELECT decision_id, sum(c) AS r FROM ("
            "SELECT decision_id, event_id, argMax(credited, version) AS c "
            f"FROM {self.layout.table('outcomes')} "
            "WHERE experiment = {e:String} GROUP BY decision_id, event_id) GROUP BY decision_id"
        )

    def logged(
        self, experiment: str, since_ms: int, until_ms: int | None, limit: int
    ) -> list[tuple[str, str, float, float]]:
        """(arm, path, propensity, reward) of personalized exposures with a propensity, newest first:
        what the promotion gate and the report's off-policy estimates read (learning.evaluation)."""
        until = " AND ts_ms < {u:Int64}" if until_ms is not None else ""
        rows = self.ch.rows(
            "SELECT x_arm, x_path, x_p, ifNull(r, 0) FROM ("
            "SELECT decision_id, any(arm) AS x_arm, any(path) AS x_path, any(propensity) AS x_p, "
            f"any(ts_ms) AS x_ts FROM {self.layout.table('exposures')} "
            "WHERE experiment = {e:String} AND reason = 'personalized' AND propensity IS NOT NULL "
            "AND ts_ms >= {s:Int64}" + until + " GROUP BY decision_id "
            "ORDER BY x_ts DESC, decision_id DESC LIMIT {n:UInt64}"
            f") AS x LEFT JOIN ({self._credits()}) AS o USING (decision_id) "
            "ORDER BY x_ts DESC, decision_id DESC",
            {"e": experiment, "s": since_ms, "u": until_ms or 0, "n": limit},
        )
        return [(str(a), str(p), float(q), float(r)) for a, p, q, r in rows]

    # --- what the delay correction reads (learning.delays) --------------------------------------

    def delays(self, experiment: str, decided_by_ms: int | None, limit: int) -> list[int]:
        """Delays (ms) of joined outcomes after their decision, newest decisions first; only
        decisions made by ``decided_by_ms`` when given (their outcomes are all in)."""
        by = " AND decision_ts_ms <= {b:Int64}" if decided_by_ms is not None else ""
        rows = self.ch.rows(
            f"SELECT ts_ms - decision_ts_ms FROM {self.layout.table('outcomes')} FINAL "
            "WHERE experiment = {e:String} AND status = 'joined'" + by + " "
            "ORDER BY decision_ts_ms DESC LIMIT {n:UInt64}",
            {"e": experiment, "b": decided_by_ms or 0, "n": limit},
        )
        return [int(d) for (d,) in rows]

    def young(
        self, experiment: str, after_ms: int, width_ms: int, since_ms: int | None
    ) -> list[tuple[str, str, int, int]]:
        """(path, arm, ts bucket of ``width_ms``, exposures) of personalized exposures after
        ``after_ms`` (and from ``since_ms`` on, if given)."""
        since = " AND ts_ms >= {s:Int64}" if since_ms is not None else ""
        rows = self.ch.rows(
            "SELECT path, arm, intDiv(ts_ms, {w:Int64}) AS bucket, count() "
            f"FROM {self.layout.table('exposures')} FINAL "
            "WHERE experiment = {e:String} AND reason = 'personalized' AND ts_ms > {a:Int64}" + since + " "
            "GROUP BY path, arm, bucket",
            {"e": experiment, "a": after_ms, "w": width_ms, "s": since_ms or 0},
        )
        return [(str(p), str(a), int(b), int(n)) for p, a, b, n in rows]

    def recent(self, experiment: str, count: int) -> tuple[int | None, list[tuple[str, str, int, float]]]:
        """The time of the ``count``-th newest personalized exposure (None if fewer), and
        (path, arm, exposures, reward) of those from it on."""
        x = self.layout.table("exposures")
        cutoff = self.ch.rows(
            f"SELECT ts_ms FROM {x} FINAL WHERE experiment = {{e:String}} AND reason = 'personalized' "
            "ORDER BY ts_ms DESC LIMIT 1 OFFSET {k:UInt64}",
            {"e": experiment, "k": count - 1},
        )
        if not cutoff:
            return None, []
        rows = self.ch.rows(
            "SELECT x_path, x_arm, count(), sum(ifNull(r, 0)) FROM ("
            "SELECT decision_id, any(path) AS x_path, any(arm) AS x_arm "
            f"FROM {x} WHERE experiment = {{e:String}} AND reason = 'personalized' AND ts_ms >= {{c:Int64}} "
            f"GROUP BY decision_id) AS x LEFT JOIN ({self._credits()}) AS o USING (decision_id) "
            "GROUP BY x_path, x_arm",
            {"e": experiment, "c": int(cutoff[0][0])},
        )
        return int(cutoff[0][0]), [(str(p), str(a), int(n), float(r)) for p, a, n, r in rows]

    def busiest_segments(self, experiment: str, limit: int) -> list[tuple[str, int]]:
        rows = self.ch.rows(
            f"SELECT segment, count() AS n FROM {self.layout.table('exposures')} FINAL "
            "WHERE experiment = {e:String} AND segment != '' GROUP BY segment ORDER BY n DESC, segment "
            "LIMIT {k:UInt32}",
            {"e": experiment, "k": limit},
        )
        return [(str(s), int(n)) for s, n in rows]

    def outcome_statuses(self, experiment: str) -> dict[str, int]:
        """As the SQL store's: expired outcomes (deleted there) are not among them."""
        return {s: n for s, n in self._statuses(experiment).items() if s != "expired"}

    def units_per_path(self, experiment: str) -> dict[tuple[str, ...], int]:
        """Distinct (hashed) visitors per feature path among personalized exposures (as the SQL store)."""
        rows = self.ch.rows(
            f"SELECT path, uniqExact(unit_hash) FROM {self.layout.table('exposures')} "
            "WHERE experiment = {e:String} AND reason = 'personalized' AND unit_hash != '' GROUP BY path",
            {"e": experiment},
        )
        return {tuple(json.loads(path)): int(n) for path, n in rows}

    def position_clicks(self, experiment: str, since_ms: int) -> dict[tuple[str, str, int], tuple[int, int]]:
        """(item, context path, position) -> (shown, rewarded) of a ranked experiment (as the SQL
        store); the position is the last two hex digits of the decision id (core.ranking)."""
        rows = self.ch.rows(
            "SELECT x_arm, x_path, x_pos, count(), countIf(ifNull(r, 0) > 0) FROM ("
            "SELECT decision_id, any(arm) AS x_arm, any(path) AS x_path, "
            "right(toString(decision_id), 2) AS x_pos "
            f"FROM {self.layout.table('exposures')} "
            "WHERE experiment = {e:String} AND reason = 'personalized' AND ts_ms >= {s:Int64} "
            f"GROUP BY decision_id) AS x LEFT JOIN ({self._credits()}) AS o USING (decision_id) "
            "GROUP BY x_arm, x_path, x_pos",
            {"e": experiment, "s": since_ms},
        )
        return {(str(a), str(path), int(str(p), 16)): (int(n), int(c)) for a, path, p, n, c in rows}

    def exposures_per_segment(
        self, experiment: str, since_ms: int, until_ms: int
    ) -> dict[tuple[str, str], int]:
        """Personalized exposures per (serving segment, arm) stamped in [since_ms, until_ms) (as the
        SQL store)."""
        rows = self.ch.rows(
            f"SELECT segment, arm, uniqExact(decision_id) FROM {self.layout.table('exposures')} "
            "WHERE experiment = {e:String} AND reason = 'personalized' "
            "AND ts_ms >= {s:Int64} AND ts_ms < {u:Int64} GROUP BY segment, arm",
            {"e": experiment, "s": since_ms, "u": until_ms},
        )
        return {(str(segment), str(arm)): int(n) for segment, arm, n in rows}

    def data_mark(self, experiment: str) -> int:
        """Changes whenever the experiment's cells do (the publisher's digest): the raw sums only grow
        but for erasures, and every erased event adds a row to ``erasures``, so (sums, erased events)
        changes with every change; merges change neither."""
        ((n, r),) = self.ch.rows(
            f"SELECT sum(exposures), sum(reward) FROM {self.layout.table('stat_deltas')} "
            "WHERE experiment = {e:String}",
            {"e": experiment},
        )
        ((erased,),) = self.ch.rows(
            f"SELECT uniqExact(id) FROM {self.layout.table('erasures')} WHERE experiment = {{e:String}}",
            {"e": experiment},
        )
        # Rounded: a merge may add the same numbers in another order.
        digest = hashlib.sha256(f"{float(n or 0.0):.6f}:{float(r or 0.0):.6f}:{int(erased)}".encode())
        return int.from_bytes(digest.digest()[:7], "big")

    def totals(self, experiment: str) -> dict[tuple[str, str], Totals]:
        """Raw sums per (path, arm) from the deltas."""
        rows = self.ch.rows(
            f"SELECT path, arm, sum(exposures), sum(reward) FROM {self.layout.table('stat_deltas')} "
            "WHERE experiment = {e:String} GROUP BY path, arm",
            {"e": experiment},
        )
        # A cell an erasure emptied sums to zero (its rows stay until merged): not a cell any more.
        return {(p, a): Totals(float(n), float(r)) for p, a, n, r in rows if abs(n) > 1e-9 or abs(r) > 1e-9}

    def recompute(self, experiment: str) -> dict[tuple[str, str], Totals]:
        """The same sums from the raw rows, each stored once (FINAL), for checking :meth:`totals`."""
        n = self.ch.rows(
            f"SELECT path, arm, count() FROM {self.layout.table('exposures')} FINAL "
            "WHERE experiment = {e:String} AND reason = 'personalized' GROUP BY path, arm",
            {"e": experiment},
        )
        r = self.ch.rows(
            f"SELECT path, arm, sum(credited) FROM {self.layout.table('outcomes')} FINAL "
            "WHERE experiment = {e:String} AND credited > 0 AND counted = 1 GROUP BY path, arm",
            {"e": experiment},
        )
        out = {(p, a): Totals(float(c), 0.0) for p, a, c in n}
        for p, a, s in r:
            before = out.get((p, a), Totals(0.0, 0.0))
            out[p, a] = Totals(before.exposures, before.reward + float(s))
        return out

    def counts(self, experiment: str) -> dict[str, int]:
        """Rows stored once each (FINAL): exposures, and outcomes by status."""
        x = self.ch.rows(
            f"SELECT count() FROM {self.layout.table('exposures')} FINAL WHERE experiment = {{e:String}}",
            {"e": experiment},
        )
        return {
            "exposures": int(x[0][0]),
            **{f"outcomes_{s}": n for s, n in self._statuses(experiment).items()},
        }

    def _statuses(self, experiment: str) -> dict[str, int]:
        rows = self.ch.rows(
            f"SELECT status, count() FROM {self.layout.table('outcomes')} FINAL "
            "WHERE experiment = {e:String} GROUP BY status",
            {"e": experiment},
        )
        return {str(s): int(c) for s, c in rows}

    def bytes_per_exposure(self) -> float:
        """Compressed bytes on disk per stored exposure (active parts)."""
        (row,) = self.ch.rows(
            "SELECT sum(bytes_on_disk), sum(rows) FROM system.parts "
            "WHERE database = {d:String} AND table = 'exposures' AND active",
            {"d": self.layout.database},
        )
        return float(row[0]) / float(row[1]) if row[1] else math.nan
