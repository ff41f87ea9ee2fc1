from __future__ import annotations

import json
import random
import time
from collections import defaultdict

import pytest

from control_plane.storage.clickhouse import Chdb, ClickHouseError
from control_plane.storage.clickhouse_events import EventLog, Exposure, Outcome, Rule
from control_plane.storage.stats import Totals

WINDOW_MS = 3_600_000
RULES = {"exp": Rule(window_ms=WINDOW_MS)}


@pytest.fixture
def log(chdb: Chdb) -> EventLog:
    events = EventLog(chdb)
    events.migrate()
    return events


def _world(seed: int, decisions: int) -> tuple[list[Exposure], list[Outcome], dict[tuple[str, str], Totals]]:
    """Exposures and outcomes of ``decisions`` decisions, and the sums they must produce.

    A third convert, some twice (a binary reward counts once); half of the conversions carry their
    decision's cell (a verified token); a tenth of decisions are held out (stored, not learnt); a
    few outcomes come after the reward window (late: stored, not learnt).
    """
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    exposures, outcomes = [], []
    expected: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for i in range(decisions):
        decision = f"{rng.getrandbits(128):032x}"
        path, arm = json.dumps([rng.choice("abc")]), rng.choice(["x", "y"])
        ts = now - rng.randrange(WINDOW_MS)
        reason = "holdout" if rng.random() < 0.1 else "personalized"
        exposures.append(Exposure("exp", decision, arm, f"u{i}", path, "all", reason, 0.5, 1, ts))
        if reason == "personalized":
            expected[path, arm][0] += 1
        if rng.random() < 1 / 3:
            late = rng.random() < 0.05
            cell = (path, arm, ts, reason) if rng.random() < 0.5 else None
            for k in range(2 if rng.random() < 0.2 else 1):
                at = ts + (WINDOW_MS + 1 if late else 1_000 + k)
                outcomes.append(Outcome("exp", decision, f"o{k}-{decision}", 1.0, f"u{i}", at, cell))
            if not late and reason == "personalized":
                expected[path, arm][1] += 1
    return exposures, outcomes, {k: Totals(n, r) for k, (n, r) in expected.items()}


def test_store_counts_each_decision_once_and_reads_the_cells(log: EventLog) -> None:
    exposures, outcomes, expected = _world(1, 600)
    stored = log.store(exposures, outcomes, RULES, int(time.time() * 1000))
    assert stored.exposures == 600 and stored.duplicates == 0
    assert stored.statuses["extra"] > 0 and stored.statuses["late"] > 0  # the world has both
    assert log.totals("exp") == expected
    assert log.recompute("exp") == expected
    cells = log.cells("exp", None, int(time.time() * 1000))
    flat = {
        (json.dumps(list(path)), arm): (c.exposures, c.reward)
        for path, arms in cells.items()
        for arm, c in arms.items()
    }
    assert flat == {k: (t.exposures, t.reward) for k, t in expected.items()}


def test_an_outcome_before_its_exposure_waits_and_a_later_one_is_joined(log: EventLog) -> None:
    now = int(time.time() * 1000)
    decision = "ab" * 16
    first = Outcome("exp", decision, "o1", 1.0, "u", now)
    assert log.store([], [first], RULES, int(time.time() * 1000)).statuses == {"pending": 1}
    exposure = Exposure("exp", decision, "x", "u", '["a"]', "all", "personalized", 0.5, 1, now - 5_000)
    second = Outcome("exp", decision, "o2", 1.0, "u", now + 1)
    # The waiting outcome is credited (the decision's one success); the second is an extra.
    assert log.store([exposure], [second], RULES, int(time.time() * 1000)).statuses == {
        "joined": 1,
        "extra": 1,
    }
    assert log.totals("exp") == {('["a"]', "x"): Totals(1.0, 1.0)}
    assert log.recompute("exp") == log.totals("exp")
    assert log.counts("exp") == {"exposures": 1, "outcomes_joined": 1, "outcomes_extra": 1}
    # Stored again (a redelivery), nothing changes.
    assert log.store([exposure], [first, second], RULES, int(time.time() * 1000)).duplicates == 3
    assert log.totals("exp") == {('["a"]', "x"): Totals(1.0, 1.0)}


def test_redelivery_and_a_consumer_killed_mid_group_count_every_event_once(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10 % of messages delivered twice, regrouped at random; some groups die after their first insert."""
    exposures, outcomes, expected = _world(2, 2_000)
    by_decision: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_decision[o.decision_id].append(o)
    messages = [
        (exposures[k : k + 50], [o for e in exposures[k : k + 50] for o in by_decision[e.decision_id]])
        for k in range(0, len(exposures), 50)
    ]
    rng = random.Random(3)
    deliveries = messages + rng.sample(messages, len(messages) // 10)
    rng.shuffle(deliveries)
    real_insert = log.ch.insert
    killed = 0
    while deliveries:
        size = rng.randrange(1, 6)
        group, deliveries = deliveries[:size], deliveries[size:]
        xs = [e for m in group for e in m[0]]
        os_ = [o for m in group for o in m[1]]
        if rng.random() < 0.2:
            calls: list[str] = []

            def dies_after_first(
                table: str, *args: object, calls: list[str] = calls, **kwargs: object
            ) -> None:
                if calls:
                    raise ClickHouseError("killed")
                calls.append(table)
                real_insert(table, *args, **kwargs)  # type: ignore[arg-type]

            monkeypatch.setattr(log.ch, "insert", dies_after_first)
            with pytest.raises(ClickHouseError):
                log.store(xs, os_, RULES, int(time.time() * 1000))
            monkeypatch.setattr(log.ch, "insert", real_insert)
            killed += 1
            deliveries.extend(group)  # not acknowledged: the messages come back
            rng.shuffle(deliveries)
            continue
        log.store(xs, os_, RULES, int(time.time() * 1000))
    assert killed > 0
    assert log.counts("exp")["exposures"] == len(exposures)
    assert log.totals("exp") == expected
    assert log.recompute("exp") == expected


def test_decayed_cells_match_the_half_life(log: EventLog) -> None:
    now = int(time.time() * 1000)
    ages_ms = [0, 600_000, 3_600_000, 5_400_000]
    exposures = [
        Exposure("exp", f"{i:032x}", "x", None, '["a"]', "all", "personalized", None, None, now - age)
        for i, age in enumerate(ages_ms)
    ]
    outcomes = [Outcome("exp", exposures[1].decision_id, "o", 1.0, None, now)]
    log.store(
        exposures, outcomes, {"exp": Rule(half_life_s=1800.0, window_ms=WINDOW_MS)}, int(time.time() * 1000)
    )
    ((_arm, cell),) = log.cells("exp", 1800.0, now)[("a",)].items()
    assert cell.exposures == pytest.approx(sum(2.0 ** (-age / 1_800_000) for age in ages_ms), rel=1e-9)
    assert cell.reward == pytest.approx(2.0 ** (-600_000 / 1_800_000), rel=1e-9)


def test_rows_past_their_time_are_dropped_and_the_statistics_stay(log: EventLog) -> None:
    now = int(time.time() * 1000)
    old = Exposure("exp", "cd" * 16, "x", None, '["a"]', "all", "personalized", None, None, now - 10_000_000)
    # Stored when it was young enough (an hour ago, by the store's clock); ClickHouse's TTL runs on its own.
    assert log.store([old], [], {"exp": Rule(keep_s=7_000)}, now - 3_600_000).exposures == 1
    log.ch.command(f"OPTIMIZE TABLE `{log.ch.database}`.exposures FINAL")
    assert log.counts("exp")["exposures"] == 0
    assert log.totals("exp") == {('["a"]', "x"): Totals(1.0, 0.0)}


def test_a_stored_exposure_takes_less_than_60_bytes(log: EventLog) -> None:
    exposures, _, _ = _world(4, 20_000)
    log.store(exposures, [], RULES, int(time.time() * 1000))
    log.ch.command(f"OPTIMIZE TABLE `{log.ch.database}`.exposures FINAL")
    assert log.bytes_per_exposure() < 60


def test_events_older_than_their_retention_are_skipped_and_counted(log: EventLog) -> None:
    now = int(time.time() * 1000)
    old = Exposure("exp", "ef" * 16, "x", None, '["a"]', "all", "personalized", None, None, now - 120_000)
    late = Outcome("exp", "ef" * 16, "o", 1.0, None, now - 61_000)
    stored = log.store([old], [late], {"exp": Rule(keep_s=60)}, now)
    assert (stored.exposures, stored.outcomes, stored.expired) == (0, 0, 2)
    assert log.totals("exp") == {}


def test_an_erasure_retried_after_new_events_negates_each_event_once(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt fails at its delete; the visitor is seen again before the retry."""
    now = int(time.time() * 1000)

    def seen(i: int, unit: str) -> Exposure:
        return Exposure("exp", f"{i:032x}", "x", unit, '["a"]', "all", "personalized", 0.5, 1, now - 1000 + i)

    log.store([seen(1, "p"), seen(2, "q"), seen(3, "q2")], [], RULES, now)
    real = log.ch.command

    def refused(sql: str, params: object = None) -> None:
        if sql.startswith("ALTER TABLE"):
            raise ClickHouseError("the delete timed out")
        real(sql, params)  # type: ignore[arg-type]

    monkeypatch.setattr(log.ch, "command", refused)
    with pytest.raises(ClickHouseError):
        log.erase(["p"])
    monkeypatch.setattr(log.ch, "command", real)
    log.store([seen(4, "p")], [], RULES, now)
    assert log.erase(["p"]) == ({"exposures": 2, "outcomes": 0}, {"exp"})
    assert log.erase(["p"]) == ({"exposures": 0, "outcomes": 0}, set())
    assert log.totals("exp") == log.recompute("exp") == {('["a"]', "x"): Totals(2.0, 0.0)}


def test_the_publish_digest_changes_when_an_erasure_and_new_events_cancel_out(log: EventLog) -> None:
    now = int(time.time() * 1000)
    log.store(
        [Exposure("exp", "a1" * 16, "x", "alice", '["a"]', "all", "personalized", 0.5, 1, now - 100)],
        [],
        RULES,
        now,
    )
    before = log.data_mark("exp")
    log.erase(["alice"])
    log.store(
        [Exposure("exp", "c1" * 16, "x", "carol", '["b"]', "all", "personalized", 0.5, 1, now - 50)],
        [],
        RULES,
        now,
    )
    assert log.data_mark("exp") != before
    marked = log.data_mark("exp")
    log.ch.command(f"OPTIMIZE TABLE `{log.ch.database}`.stat_deltas FINAL")
    assert log.data_mark("exp") == marked  # merges change nothing


def test_a_first_outcome_adding_nothing_is_joined_and_a_second_is_extra(log: EventLog) -> None:
    now = int(time.time() * 1000)
    decision = "d1" * 16
    shown = Exposure("exp", decision, "x", "u", '["a"]', "all", "personalized", 0.5, 1, now - 100)
    zero = Outcome("exp", decision, "o-zero", 0.0, "u", now - 50)
    assert log.store([shown], [zero], RULES, now).statuses == {"joined": 1}
    one, again = (
        Outcome("exp", decision, "o-1", 1.0, "u", now - 40),
        Outcome("exp", decision, "o-2", 1.0, "u", now),
    )
    assert log.store([], [one, again], RULES, now).statuses == {"joined": 1, "extra": 1}


def test_a_timestamp_past_2106_is_stored_within_datetime(log: EventLog) -> None:
    now = int(time.time() * 1000)
    decision = "e1" * 16
    shown = Exposure("exp", decision, "x", "u", '["a"]', "all", "personalized", 0.5, 1, now - 100)
    future = Outcome("exp", decision, "o-far", 1.0, "u", 5_000_000_000_000)
    assert log.store([shown], [future], RULES, now).statuses == {"late": 1}
    ((until,),) = log.ch.rows(f"SELECT toUInt32(keep_until) FROM `{log.ch.database}`.outcomes")
    assert until == 4_294_967_295


def test_an_expired_outcome_is_not_credited_by_its_late_exposure_among_many(log: EventLog) -> None:
    # The pending lookup first finds decisions with any pending row, then reads only those FINAL: an
    # outcome expired since (a newer row version, the pending one not yet merged away) stays expired.
    now = int(time.time() * 1000)
    waiting = "cd" * 16
    outcomes = log.layout.table("outcomes")
    log.ch.command(f"SYSTEM STOP MERGES {outcomes}")  # keep both row versions apart
    assert log.store([], [Outcome("exp", waiting, "o1", 1.0, "u", now - 10_000)], RULES, now).statuses == {
        "pending": 1
    }
    assert log.expire_pending({"exp": now}) == {"exp": 1}
    assert log.ch.rows(f"SELECT status FROM {outcomes} ORDER BY version") == [("pending",), ("expired",)]
    others = [
        Exposure("exp", f"{i:032x}", "x", "u", '["a"]', "all", "personalized", 0.5, 1, now - 20_000)
        for i in range(1, 200)
    ]
    late = Exposure("exp", waiting, "y", "u", '["a"]', "all", "personalized", 0.5, 1, now - 20_000)
    stored = log.store([*others, late], [], RULES, now)
    assert stored.exposures == 200 and stored.statuses == {}
    assert log.totals("exp") == {('["a"]', "x"): Totals(199.0, 0.0), ('["a"]', "y"): Totals(1.0, 0.0)}
