"""Events and the learner's cells in ClickHouse: appended per consumer group, exact under retries.

ClickHouse has no transactions and no unique keys, so exactness comes from three rules:

* **cells are a function of the raw rows**: the materialized views of
  control_plane.storage.clickhouse_schema turn every inserted block of exposures and of credited
  outcomes into cell deltas within the same INSERT, so nothing else writes statistics;
* **rows already stored are skipped**, by id, before inserting: exposures by decision id, outcomes
  by event id (a redelivered message, a consumer killed after one insert and before the next or
  before acknowledging, an event the edge sent twice); and a binary reward is credited once per
  decision, counting what earlier outcomes credited;
* **every insert carries a deduplication token** (a digest of its rows' ids), with a window on
  every table, views' target included: an insert retried as it was is dropped by ClickHouse.

The skip relies on one writer at a time per decision's events, which routing by decision id gives
(core.queue.route routes outcomes; with one consumer per queue that consumer credits them in
order). Outcomes are inserted before exposures, so a consumer killed between the two leaves
nothing a retry would count twice. A kill inside one INSERT, between the table's part and its
view's part, is not covered: :meth:`EventLog.recompute` finds it (ClickHouse gives no atomicity
across a table and its views).

Reads group the ``SummingMergeTree`` deltas by cell and hour (parts not yet merged still hold
several rows per key) and decay them as control_plane.storage.stats does.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from control_plane.storage.clickhouse import ClickHouseError, Executor
from control_plane.storage.clickhouse_schema import Layout, statements
from control_plane.storage.stats import HOUR_MS, CellStats, Totals

__all__ = ["EventLog", "Exposure", "Outcome", "Rule", "Stored"]

_EXPOSURE_COLUMNS = (
    "experiment",
    "decision_id",
    "arm",
    "unit_hash",
    "path",
    "segment",
    "reason",
    "propensity",
    "snapshot_version",
    "ts_ms",
    "half_life_s",
    "keep_until",
)
_OUTCOME_COLUMNS = (
    "experiment",
    "decision_id",
    "event_id",
    "value",
    "unit_hash",
    "ts_ms",
    "status",
    "credited",
    "path",
    "arm",
    "decision_ts_ms",
    "counted",
    "half_life_s",
    "keep_until",
    "version",
)


@dataclass(frozen=True, slots=True)
class Rule:
    """What an experiment's spec says about storing its events."""

    half_life_s: float | None = None  # decay of the learner's cells
    window_ms: int = 86_400_000  # an outcome later than this after its decision is late (kept, not learnt)
    binary: bool = True  # a second conversion of a binary decision is "extra"
    keep_s: int = 90 * 86_400  # rows are dropped this long after their time (reward window + evaluation)


@dataclass(frozen=True, slots=True)
class Exposure:
    experiment: str
    decision_id: str  # 32 hex characters
    arm: str
    unit_hash: str | None
    path: str  # JSON list of the experiment's feature values
    segment: str | None
    reason: str
    propensity: float | None
    snapshot_version: int | None
    ts_ms: int


@dataclass(frozen=True, slots=True)
class Outcome:
    experiment: str
    decision_id: str
    event_id: str
    value: float  # the reward in [0, 1]: 1 for a binary conversion, else scaled by the reward rule
    unit_hash: str | None
    ts_ms: int
    cell: tuple[str, str, int, str] | None = None  # (path, arm, decision ms, reason), from a verified token


_DEFAULT = Rule()
_THEIRS = "unit_hash IN {h:Array(String)}"  # a person's rows: ``h`` holds their unit hashes
_Cell = tuple[str, str, int, str]  # (path, arm, decision ms, reason)


@dataclass
class Stored:
    """What one group added: new rows, duplicates skipped, and outcomes by status."""

    exposures: int = 0
    outcomes: int = 0
    duplicates: int = 0
    expired: int = 0  # older than their experiment's retention: skipped
    statuses: dict[str, int] = field(default_factory=dict)


class EventLog:
    """Exposures, outcomes and cell deltas in ClickHouse (chDB or a server), through an :class:`Executor`."""

    def __init__(self, ch: Executor, layout: Layout | None = None) -> None:
        self.ch = ch
        self.layout = layout or Layout(database=ch.database)

    def migrate(self) -> None:
        for sql in statements(self.layout):
            self.ch.command(sql)

    # --- writing ------------------------------------------------------------------------------

    def store(
        self,
        exposures: Sequence[Exposure],
        outcomes: Sequence[Outcome],
        rules: Mapping[str, Rule],
        now_ms: int,
    ) -> Stored:
        """Store one group of events (see the module's rules); safe to call again with any of them.

        Events older than their experiment's retention (``Rule.keep_s``) are skipped and counted:
        the TTL would drop their rows at once, and a redelivery could then not be recognised.
        """
        out = Stored()
        now_s = now_ms // 1000

        def kept(e: Exposure | Outcome) -> bool:
            if e.ts_ms // 1000 + rules.get(e.experiment, _DEFAULT).keep_s > now_s:
                return True
            out.expired += 1
            return False

        exposures = [e for e in exposures if kept(e)]
        outcomes = [o for o in outcomes if kept(o)]
        known = self._stored_decisions({(e.experiment, e.decision_id) for e in exposures})
        fresh: dict[tuple[str, str], Exposure] = {}
        for e in exposures:
            key = (e.experiment, e.decision_id)
            if key in known or key in fresh:
                out.duplicates += 1
            else:
                fresh[key] = e
        known_events = self._stored_outcomes({(o.experiment, o.event_id) for o in outcomes})
        new: dict[tuple[str, str], Outcome] = {}
        for o in outcomes:
            key = (o.experiment, o.event_id)
            if key in known_events or key in new:
                out.duplicates += 1
            else:
                new[key] = o
        # Outcomes stored earlier and still waiting for one of these exposures are credited now,
        # as a newer version of their row (ReplacingMergeTree keeps the newest).
        waiting = self._pending_for(set(fresh))
        rows = self._credit([*waiting, *new.values()], fresh, rules, out)
        out.outcomes = len(new)
        self.ch.insert(
            "outcomes", _OUTCOME_COLUMNS, rows, token=_token("o", (f"{r[2]}:{r[-1]}" for r in rows))
        )
        self.ch.insert(
            "exposures",
            _EXPOSURE_COLUMNS,
            [
                (
                    e.experiment,
                    e.decision_id,
                    e.arm,
                    e.unit_hash or "",
                    e.path,
                    e.segment or "",
                    e.reason,
                    e.propensity,
                    e.snapshot_version or 0,
                    e.ts_ms,
                    rules.get(e.experiment, _DEFAULT).half_life_s or 0.0,
                    (e.ts_ms // 1000) + rules.get(e.experiment, _DEFAULT).keep_s,
                )
                for e in fresh.values()
            ],
            token=_token("x", (e.decision_id for e in fresh.values())),
        )
        out.exposures = len(fresh)
        return out

    def _credit(
        self,
        outcomes: Sequence[Outcome],
        fresh: Mapping[tuple[str, str], Exposure],
        rules: Mapping[str, Rule],
        out: Stored,
    ) -> list[tuple[object, ...]]:
        """Each outcome's row: its status and what it credited, in time order per decision."""
        if not outcomes:
            return []
        decisions = {(o.experiment, o.decision_id) for o in outcomes}
        cells: dict[tuple[str, str], _Cell] = self._cells_of(decisions - set(fresh))
        cells.update({k: (e.path, e.arm, e.ts_ms, e.reason) for k, e in fresh.items() if k in decisions})
        credited = self._credited(decisions)
        rows: list[tuple[object, ...]] = []
        for o in sorted(outcomes, key=lambda o: (o.ts_ms, o.event_id)):
            rule = rules.get(o.experiment, _DEFAULT)
            decision = (o.experiment, o.decision_id)
            found = o.cell or cells.get(decision)
            status, gain = "pending", 0.0
            if found is not None:
                if o.ts_ms - found[2] > rule.window_ms:
                    status = "late"
                else:
                    # A decision's rewards add up to at most one success: a binary one counts once.
                    before = credited.get(decision, 0.0)
                    gain = max(0.0, min(o.value, 1.0 - before))
                    status = "extra" if gain <= 0.0 and rule.binary else "joined"
                    credited[decision] = before + gain
            out.statuses[status] = out.statuses.get(status, 0) + 1
            rows.append(
                (
                    o.experiment,
                    o.decision_id,
                    o.event_id,
                    o.value,
                    o.unit_hash or "",
                    o.ts_ms,
                    status,
                    gain,
                    found[0] if found else "",
                    found[1] if found else "",
                    found[2] if found else 0,
                    # A holdout or no-consent decision's reward is stored, not learnt (as its exposure).
                    1 if found is not None and found[3] == "personalized" else 0,
                    rule.half_life_s or 0.0,
                    (o.ts_ms // 1000) + rule.keep_s,
                    0 if status == "pending" else 1,  # the row's version: a credit replaces "pending"
                )
            )
        return rows

    def _pending_for(self, keys: set[tuple[str, str]]) -> list[Outcome]:
        out: list[Outcome] = []
        for experiment, ids in self._by_experiment(keys).items():
            rows = self.ch.rows(
                "SELECT decision_id, event_id, value, unit_hash, ts_ms "
                f"FROM {self.layout.table('outcomes')} FINAL "
                "WHERE experiment = {e:String} AND decision_id IN {ids:Array(UUID)} AND status = 'pending'",
                {"e": experiment, "ids": ids},
            )
            out.extend(Outcome(experiment, _hex(d), i, float(v), u or None, int(t)) for d, i, v, u, t in rows)
        return out

    # --- lookups (by the sort key: a few granules each) ----------------------------------------

    def _by_experiment(self, keys: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for experiment, ident in keys:
            grouped.setdefault(experiment, []).append(ident)
        return grouped

    def _stored_decisions(self, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for experiment, ids in self._by_experiment(keys).items():
            rows = self.ch.rows(
                f"SELECT DISTINCT decision_id FROM {self.layout.table('exposures')} "
                "WHERE experiment = {e:String} AND decision_id IN {ids:Array(UUID)}",
                {"e": experiment, "ids": ids},
            )
            out.update((experiment, _hex(r[0])) for r in rows)
        return out

    def _stored_outcomes(self, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for experiment, ids in self._by_experiment(keys).items():
            rows = self.ch.rows(
                f"SELECT DISTINCT event_id FROM {self.layout.table('outcomes')} "
                "WHERE experiment = {e:String} AND event_id IN {ids:Array(String)}",
                {"e": experiment, "ids": ids},
            )
            out.update((experiment, r[0]) for r in rows)
        return out

    def _cells_of(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, str, int, str]]:
        out: dict[tuple[str, str], tuple[str, str, int, str]] = {}
        for experiment, ids in self._by_experiment(keys).items():
            rows = self.ch.rows(
                f"SELECT decision_id, any(path), any(arm), any(ts_ms), any(reason) "
                f"FROM {self.layout.table('exposures')} "
                "WHERE experiment = {e:String} AND decision_id IN {ids:Array(UUID)} GROUP BY decision_id",
                {"e": experiment, "ids": ids},
            )
            out.update({(experiment, _hex(d)): (p, a, int(t), r) for d, p, a, t, r in rows})
        return out

    def _credited(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for experiment, ids in self._by_experiment(keys).items():
            rows = self.ch.rows(
                # One row per outcome event even before parts merge (ReplacingMergeTree).
                "SELECT decision_id, sum(credited) FROM ("
                "SELECT decision_id, event_id, argMax(credited, version) AS credited "
                f"FROM {self.layout.table('outcomes')} "
                "WHERE experiment = {e:String} AND decision_id IN {ids:Array(UUID)} "
                "GROUP BY decision_id, event_id) GROUP BY decision_id",
                {"e": experiment, "ids": ids},
            )
            out.update({(experiment, _hex(d)): float(c) for d, c in rows})
        return out

    # --- a visitor's rights -----------------------------------------------------------------

    def export(self, hashes: Sequence[str]) -> dict[str, list[dict[str, object]]]:
        """Every exposure and outcome of these unit hashes (and the outcomes of their decisions)."""
        x, o = self.layout.table("exposures"), self.layout.table("outcomes")
        params = {"h": list(hashes)}
        names = ("experiment", "decision_id", "arm", "path", "segment", "reason", "propensity", "ts_ms")
        exposures = [
            dict(zip(names, (*r[:1], _hex(r[1]), *r[2:]), strict=True))
            for r in self.ch.rows(
                f"SELECT {', '.join(names)} FROM {x} FINAL WHERE {_THEIRS} ORDER BY ts_ms",
                params,
            )
        ]
        onames = ("experiment", "decision_id", "event_id", "value", "ts_ms", "status", "credited")
        outcomes = [
            dict(zip(onames, (*r[:1], _hex(r[1]), *r[2:]), strict=True))
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
        ids = [f"x{_hex(r[1])}" for r in exposed] + [f"o{r[1]}" for r in credited]
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
            token=_token("erase", ids),
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

    # --- reading ------------------------------------------------------------------------------

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
        x, o = self.layout.table("exposures"), self.layout.table("outcomes")
        # Aliases that shadow no column: ClickHouse would read them in WHERE too.
        keys = ", ".join(f"x_{name}" for name in by)
        only = " AND segment IN {s:Array(String)}" if segments is not None else ""
        rows = self.ch.rows(
            f"SELECT {keys}, count(), sum(r), sum(r * r), countIf(r > 0) FROM ("
            "SELECT decision_id, any(segment) AS x_segment, any(reason) AS x_reason, any(arm) AS x_arm "
            f"FROM {x} "
            "WHERE experiment = {e:String} AND reason IN ('personalized', 'holdout')" + only + " "
            "GROUP BY decision_id) AS x LEFT JOIN ("
            "SELECT decision_id, sum(c) AS r FROM ("
            f"SELECT decision_id, event_id, argMax(credited, version) AS c FROM {o} "
            "WHERE experiment = {e:String} GROUP BY decision_id, event_id) GROUP BY decision_id"
            f") AS o USING (decision_id) GROUP BY {keys}",
            {"e": experiment, "s": list(segments or ())},
        )
        k = len(by)
        return {tuple(r[:k]): (int(r[k]), float(r[k + 1]), float(r[k + 2]), int(r[k + 3])) for r in rows}

    def busiest_segments(self, experiment: str, limit: int) -> list[tuple[str, int]]:
        rows = self.ch.rows(
            f"SELECT segment, count() AS n FROM {self.layout.table('exposures')} FINAL "
            "WHERE experiment = {e:String} AND segment != '' GROUP BY segment ORDER BY n DESC, segment "
            "LIMIT {k:UInt32}",
            {"e": experiment, "k": limit},
        )
        return [(str(s), int(n)) for s, n in rows]

    def outcome_statuses(self, experiment: str) -> dict[str, int]:
        counts = self.counts(experiment)
        return {k.removeprefix("outcomes_"): v for k, v in counts.items() if k.startswith("outcomes_")}

    def units_per_path(self, experiment: str) -> dict[tuple[str, ...], int]:
        """Distinct (hashed) visitors per feature path among personalized exposures (as the SQL store)."""
        rows = self.ch.rows(
            f"SELECT path, uniqExact(unit_hash) FROM {self.layout.table('exposures')} "
            "WHERE experiment = {e:String} AND reason = 'personalized' AND unit_hash != '' GROUP BY path",
            {"e": experiment},
        )
        return {tuple(json.loads(path)): int(n) for path, n in rows}

    def data_mark(self, experiment: str) -> int:
        """Changes whenever the experiment's cells do (the publisher's digest): nothing here ever
        subtracts, so the raw sums only grow; merges leave them as they are."""
        ((n, r, hours),) = self.ch.rows(
            f"SELECT sum(exposures), sum(reward), max(hour_ms) FROM {self.layout.table('stat_deltas')} "
            "WHERE experiment = {e:String}",
            {"e": experiment},
        )
        # Rounded: a merge may add the same numbers in another order.
        digest = hashlib.sha256(f"{float(n or 0.0):.6f}:{float(r or 0.0):.6f}:{int(hours or 0)}".encode())
        return int.from_bytes(digest.digest()[:7], "big")

    def totals(self, experiment: str) -> dict[tuple[str, str], Totals]:
        """Raw sums per (path, arm) from the deltas."""
        rows = self.ch.rows(
            f"SELECT path, arm, sum(exposures), sum(reward) FROM {self.layout.table('stat_deltas')} "
            "WHERE experiment = {e:String} GROUP BY path, arm",
            {"e": experiment},
        )
        return {(p, a): Totals(float(n), float(r)) for p, a, n, r in rows}

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
        o = self.ch.rows(
            f"SELECT status, count() FROM {self.layout.table('outcomes')} FINAL "
            "WHERE experiment = {e:String} GROUP BY status",
            {"e": experiment},
        )
        return {"exposures": int(x[0][0]), **{f"outcomes_{s}": int(c) for s, c in o}}

    def bytes_per_exposure(self) -> float:
        """Compressed bytes on disk per stored exposure (active parts)."""
        (row,) = self.ch.rows(
            "SELECT sum(bytes_on_disk), sum(rows) FROM system.parts "
            "WHERE database = {d:String} AND table = 'exposures' AND active",
            {"d": self.layout.database},
        )
        return float(row[0]) / float(row[1]) if row[1] else math.nan


def _token(kind: str, ids: Iterable[str]) -> str:
    """The same rows, the same token: an insert retried as it was is dropped by ClickHouse."""
    digest = hashlib.sha256()
    for ident in sorted(ids):
        digest.update(ident.encode() + b"\0")
    return f"perch:{kind}:{digest.hexdigest()}"


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


def _hex(value: object) -> str:
    return value.hex if hasattr(value, "hex") and not isinstance(value, (str, bytes)) else str(value).lower()
