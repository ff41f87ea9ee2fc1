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
(core.queue.route sends a decision's exposure and outcomes to one queue; with one consumer per
queue that consumer stores them in order). Outcomes are inserted before exposures, so a consumer
killed between the two leaves nothing a retry would count twice. A kill inside one INSERT, between
the table's part and its view's part, is not covered: :meth:`EventLog.recompute` finds it
(ClickHouse gives no atomicity across a table and its views).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from control_plane.storage.clickhouse import Executor, dedup_token, uuid_hex
from control_plane.storage.clickhouse_privacy import VisitorRights
from control_plane.storage.clickhouse_reads import EventReads
from control_plane.storage.clickhouse_schema import Layout, statements

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
_Cell = tuple[str, str, int, str]  # (path, arm, decision ms, reason)


@dataclass
class Stored:
    """What one group added: new rows, duplicates skipped, and outcomes by status."""

    exposures: int = 0
    outcomes: int = 0
    duplicates: int = 0
    expired: int = 0  # older than their experiment's retention: skipped
    statuses: dict[str, int] = field(default_factory=dict)
    by_experiment: Counter[tuple[str, str]] = field(default_factory=Counter)  # (experiment, status)


class EventLog(EventReads, VisitorRights):
    """Exposures, outcomes and cell deltas in ClickHouse (chDB or a server), through an :class:`Executor`.

    Writing is here; reading (the learner's cells, the report's sums) is
    :class:`~control_plane.storage.clickhouse_reads.EventReads`, a visitor's export and erasure
    :class:`~control_plane.storage.clickhouse_privacy.VisitorRights`."""

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
        fresh = _unseen(
            {(e.experiment, e.decision_id): e for e in reversed(exposures)},
            self._stored_decisions({(e.experiment, e.decision_id) for e in exposures}),
        )
        new = _unseen(
            {(o.experiment, o.event_id): o for o in reversed(outcomes)},
            self._stored_outcomes({(o.experiment, o.event_id) for o in outcomes}),
        )
        out.duplicates += len(exposures) - len(fresh) + len(outcomes) - len(new)
        # Outcomes stored earlier and still waiting for one of these exposures are credited now,
        # as a newer version of their row (ReplacingMergeTree keeps the newest).
        waiting = self._pending_for(set(fresh))
        rows = self._credit([*waiting, *new.values()], fresh, rules, out)
        out.outcomes = len(new)
        self.ch.insert(
            "outcomes", _OUTCOME_COLUMNS, rows, token=dedup_token("o", (f"{r[2]}:{r[-1]}" for r in rows))
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
                    _until(e.ts_ms, rules.get(e.experiment, _DEFAULT).keep_s),
                )
                for e in fresh.values()
            ],
            token=dedup_token("x", (e.decision_id for e in fresh.values())),
        )
        out.exposures = len(fresh)
        return out

    def expire_pending(self, cutoffs: Mapping[str, int]) -> dict[str, int]:
        """Outcomes still waiting for their exposure and older than their experiment's cutoff (ms)
        become ``expired``, per experiment how many: an exposure arriving now could only make them late.

        As a newer version of each row, not a delete (a mutation rewrites whole parts); the TTL drops
        them with the rest. Safe to repeat: what is expired is no longer pending."""
        table, out = self.layout.table("outcomes"), {}
        columns = ", ".join(_OUTCOME_COLUMNS)
        kept = ", ".join({"status": "'expired'", "version": "toUInt8(1)"}.get(c, c) for c in _OUTCOME_COLUMNS)
        for experiment, cutoff in sorted(cutoffs.items()):
            where = "WHERE experiment = {e:String} AND status = 'pending' AND ts_ms < {c:Int64}"
            params = {"e": experiment, "c": cutoff}
            (row,) = self.ch.rows(f"SELECT count() FROM {table} FINAL {where}", params)
            if row[0]:
                self.ch.command(
                    f"INSERT INTO {table} ({columns}) SELECT {kept} FROM {table} FINAL {where}", params
                )
                out[experiment] = int(row[0])
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
                    before, seen = credited.get(decision, (0.0, 0))
                    gain = max(0.0, min(o.value, 1.0 - before))
                    # As in SQL: "extra" is a later outcome of a binary decision that adds nothing.
                    status = "extra" if gain <= 0.0 and rule.binary and seen > 0 else "joined"
                    credited[decision] = (before + gain, seen + 1)
            out.statuses[status] = out.statuses.get(status, 0) + 1
            out.by_experiment[o.experiment, status] += 1
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
                    _until(o.ts_ms, rule.keep_s),
                    0 if status == "pending" else 1,  # the row's version: a credit replaces "pending"
                )
            )
        return rows

    def _pending_for(self, keys: set[tuple[str, str]]) -> list[Outcome]:
        out: list[Outcome] = []
        for experiment, ids in self._by_experiment(keys).items():
            # Two steps: the decisions with any pending row (no FINAL, which costs several times
            # more over thousands of decisions), then only those with FINAL (a pending row may have
            # been credited since, as a newer version). Few outcomes wait, so the second is small.
            waiting = self.ch.rows(
                f"SELECT DISTINCT decision_id FROM {self.layout.table('outcomes')} "
                "WHERE experiment = {e:String} AND decision_id IN {ids:Array(UUID)} AND status = 'pending'",
                {"e": experiment, "ids": ids},
            )
            if not waiting:
                continue
            rows = self.ch.rows(
                "SELECT decision_id, event_id, value, unit_hash, ts_ms "
                f"FROM {self.layout.table('outcomes')} FINAL "
                "WHERE experiment = {e:String} AND decision_id IN {ids:Array(UUID)} AND status = 'pending'",
                {"e": experiment, "ids": [uuid_hex(r[0]) for r in waiting]},
            )
            out.extend(
                Outcome(experiment, uuid_hex(d), i, float(v), u or None, int(t)) for d, i, v, u, t in rows
            )
        return out

    # --- lookups (by the sort key: a few granules each) ----------------------------------------

    def _by_experiment(self, keys: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for experiment, ident in keys:
            grouped.setdefault(experiment, []).append(ident)
        return grouped

    def _stored_decisions(self, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
        return self._stored("exposures", "decision_id", "UUID", keys)

    def _stored_outcomes(self, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
        return self._stored("outcomes", "event_id", "String", keys)

    def _stored(self, table: str, column: str, kind: str, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of the (experiment, id) ``keys`` are in ``table`` already."""
        out: set[tuple[str, str]] = set()
        for experiment, ids in self._by_experiment(keys).items():
            rows = self.ch.rows(
                f"SELECT DISTINCT {column} FROM {self.layout.table(table)} "
                f"WHERE experiment = {{e:String}} AND {column} IN {{ids:Array({kind})}}",
                {"e": experiment, "ids": ids},
            )
            out.update((experiment, uuid_hex(r[0]) if kind == "UUID" else str(r[0])) for r in rows)
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
            out.update({(experiment, uuid_hex(d)): (p, a, int(t), r) for d, p, a, t, r in rows})
        return out

    def _credited(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[float, int]]:
        """Per decision: what its stored outcomes credited, and how many of them there are."""
        out: dict[tuple[str, str], tuple[float, int]] = {}
        for experiment, ids in self._by_experiment(keys).items():
            rows = self.ch.rows(
                # One row per outcome event even before parts merge (ReplacingMergeTree).
                "SELECT decision_id, sum(credited), count() FROM ("
                "SELECT decision_id, event_id, argMax(credited, version) AS credited "
                f"FROM {self.layout.table('outcomes')} "
                "WHERE experiment = {e:String} AND decision_id IN {ids:Array(UUID)} "
                "GROUP BY decision_id, event_id) GROUP BY decision_id",
                {"e": experiment, "ids": ids},
            )
            out.update({(experiment, uuid_hex(d)): (float(c), int(k)) for d, c, k in rows})
        return out


_Row = TypeVar("_Row")


def _unseen(first: dict[tuple[str, str], _Row], stored: set[tuple[str, str]]) -> dict[tuple[str, str], _Row]:
    """The first row of each id (``first`` was built from the rows reversed), less those stored."""
    return {key: row for key, row in reversed(first.items()) if key not in stored}


_LAST_DATETIME = 4_294_967_295  # ClickHouse's DateTime ends in 2106


def _until(ts_ms: int, keep_s: int) -> int:
    """A row's ``keep_until``, within DateTime's range (a timestamp far in the future must not make
    a server refuse the whole group, which would then come back forever)."""
    return max(0, min(ts_ms // 1000 + keep_s, _LAST_DATETIME))
