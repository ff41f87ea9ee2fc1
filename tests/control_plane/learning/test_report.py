from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from scipy import integrate, stats
from sqlalchemy import event

from control_plane.distribution.kv_publishers import LocalKVPublisher
from control_plane.experiments import ExperimentSpec
from control_plane.learning.publish import Gate, publish_experiment
from control_plane.learning.report import build_report
from control_plane.metrics import Metrics
from control_plane.storage.store import ExperimentRecord, Store
from core import LocalKV, position_id
from tests.control_plane.event_stores import put
from tests.factories import HOUR, NOW, exposure, outcome, spec

Z = 1.959963984540054
MOBILE = {"device": "mobile", "source": "search"}
DESKTOP = {"device": "desktop"}


def exp(i: int, arm: str, reason: str, segment: str | None, context: dict[str, str]) -> dict[str, Any]:
    return {**exposure(i, arm=arm, reason=reason, context=context), "segment": segment}


# Exposures per segment (conversions in brackets):
#   device:mobile   personalized b 4 [1, 2, 3], c 2 []       holdout a 4 [7]
#   device:desktop  personalized b 2 [], a 2 [13]            holdout a 2 [15, 16]   stale a 1
#   no segment      consent a 1
EVENTS = [
    *(exp(i, "b", "personalized", "device:mobile", MOBILE) for i in (1, 2, 3, 4)),
    *(exp(i, "c", "personalized", "device:mobile", MOBILE) for i in (5, 6)),
    *(exp(i, "a", "holdout", "device:mobile", MOBILE) for i in (7, 8, 9, 10)),
    *(exp(i, "b", "personalized", "device:desktop", DESKTOP) for i in (11, 12)),
    *(exp(i, "a", "personalized", "device:desktop", DESKTOP) for i in (13, 14)),
    *(exp(i, "a", "holdout", "device:desktop", DESKTOP) for i in (15, 16)),
    exp(17, "a", "stale", "device:desktop", DESKTOP),
    exp(18, "a", "consent", None, {}),
    *(outcome(i) for i in (1, 2, 3, 7, 13, 15, 16)),
    outcome(1, event="o-1-again"),  # extra: a binary decision converts once
    outcome(5, ts=NOW + 25 * HOUR),  # late: outside the 24 h window, so c stays at 0
    outcome(99),  # pending: its exposure never came
]


@pytest.fixture
def store(any_store: Store) -> Store:
    """The report reads the same from every event store (tests/control_plane/event_stores.py)."""
    return any_store


@pytest.fixture
def hero(store: Store) -> ExperimentRecord:
    # A handful of visitors per segment: publish every segment they reach.
    record = store.create_experiment(spec(min_segment_units=1), NOW)
    put(store, EVENTS, NOW)
    return record


def lift_ci(p: list[float], h: list[float]) -> list[float]:
    """Difference of means, normal approximation with sample variances (the hand formula)."""
    mp, mh = sum(p) / len(p), sum(h) / len(h)
    vp = sum((x - mp) ** 2 for x in p) / (len(p) - 1)
    vh = sum((x - mh) ** 2 for x in h) / (len(h) - 1)
    half = Z * math.sqrt(vp / len(p) + vh / len(h))
    return [mp - mh - half, mp - mh + half]


def prob_best_exact(shapes: list[tuple[float, float]]) -> list[float]:
    """P(arm i has the largest Beta draw) = integral of pdf_i * prod_{j != i} cdf_j."""

    def density(x: float, i: int) -> float:
        out = float(stats.beta.pdf(x, *shapes[i]))
        for j, (a, b) in enumerate(shapes):
            if j != i:
                out *= float(stats.beta.cdf(x, a, b))
        return out

    return [float(integrate.quad(density, 0.0, 1.0, args=(i,))[0]) for i in range(len(shapes))]


def check_arms(rows: list[dict[str, Any]], expected: dict[str, tuple[int, int]]) -> None:
    """Each arm's (exposures, conversions), and its Beta(1 + r, 1 + n - r) posterior, checked."""
    shapes = [(1.0 + r, 1.0 + n - r) for n, r in expected.values()]
    best = prob_best_exact(shapes)
    assert [row["arm"] for row in rows] == list(expected)
    for row, (n, r), (a, b), p_best in zip(rows, expected.values(), shapes, best, strict=True):
        assert (row["exposures"], row["conversions"], row["reward"]) == (n, r, r)
        assert row["rate"] == (pytest.approx(r / n) if n else None)
        assert row["posterior_mean"] == pytest.approx(a / (a + b), abs=1e-6)
        assert row["ci_low"] == pytest.approx(stats.beta.ppf(0.025, a, b), abs=0.01)
        assert row["ci_high"] == pytest.approx(stats.beta.ppf(0.975, a, b), abs=0.01)
        assert row["prob_best"] == pytest.approx(p_best, abs=0.015)


def test_global_arms_and_holdout(store: Store, hero: ExperimentRecord) -> None:
    report = build_report(store, hero, NOW + 5).to_dict()
    assert (report["experiment"], report["version"], report["generated_ms"]) == ("hero", 1, NOW + 5)
    assert report["reward_kind"] == "binary"
    # Personalized only: a 2 [1], b 4 + 2 [3], c 2 [0].  No snapshot yet, so no allocation.
    check_arms(report["arms"], {"a": (2, 1), "b": (6, 3), "c": (2, 0)})
    assert [row["allocation"] for row in report["arms"]] == [None, None, None]
    # b at Beta(4, 4) and a at Beta(2, 2) share a mean of 0.5, c at Beta(1, 3) trails.
    assert report["arms"][2]["prob_best"] < 0.2

    holdout = report["holdout"]
    # Personalized 4 of 10, holdout 3 of 6; stale and consent exposures are in neither.
    assert holdout["personalized"] == {"exposures": 10, "reward": 4.0, "rate": 0.4}
    assert holdout["holdout"] == {"exposures": 6, "reward": 3.0, "rate": 0.5}
    assert holdout["lift"] == pytest.approx(-0.1)
    assert holdout["relative_lift"] == pytest.approx(-0.2)  # -0.1 / 0.5
    # var_p = (4 - 4^2/10) / 9 = 0.2667, var_h = (3 - 3^2/6) / 5 = 0.3
    # half-width = 1.96 * sqrt(0.2667/10 + 0.3/6) = 0.5427
    expected = lift_ci([1.0] * 4 + [0.0] * 6, [1.0] * 3 + [0.0] * 3)
    assert holdout["lift_ci"] == pytest.approx(expected, abs=1e-6)
    assert holdout["lift_ci"] == pytest.approx([-0.1 - 0.542688, -0.1 + 0.542688], abs=1e-5)

    assert report["outcomes"] == {"joined": 7, "late": 1, "pending": 1, "extra": 1}
    assert report["counters"] == store.counters("hero")
    assert report["counters"]["late_outcomes"] == 1 and report["counters"]["extra_outcomes"] == 1
    assert (report["snapshots"], report["allocation_history"]) == ([], [])
    assert (report["alerts"], report["ope"]) == ([], None)
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_segments_decompose_a_win_and_a_loss(store: Store, hero: ExperimentRecord) -> None:
    report = build_report(store, hero, NOW).to_dict()
    mobile, desktop = report["segments"]  # the consent exposure has no segment
    # Busiest first: mobile has 10 exposures; desktop 7, counting its stale one.
    assert (mobile["segment"], mobile["exposures"]) == ("device:mobile", 10)
    assert (desktop["segment"], desktop["exposures"]) == ("device:desktop", 7)
    assert mobile["features"] is None  # no snapshot names the segment yet

    # mobile: personalized 3/6 = 0.5 beats holdout 1/4 = 0.25
    assert mobile["personalized"] == {"exposures": 6, "reward": 3.0, "rate": 0.5}
    assert mobile["holdout"] == {"exposures": 4, "reward": 1.0, "rate": 0.25}
    assert (mobile["lift"], mobile["relative_lift"]) == (pytest.approx(0.25), pytest.approx(1.0))
    # 1.96 * sqrt(0.3/6 + 0.25/4) = 1.96 * sqrt(0.1125)
    assert mobile["lift_ci"] == pytest.approx(lift_ci([1.0] * 3 + [0.0] * 3, [1.0] + [0.0] * 3), abs=1e-6)
    assert mobile["lift_ci"][0] < 0 < mobile["lift_ci"][1]

    # desktop: personalized 1/4 = 0.25 loses to holdout 2/2 = 1.0
    assert desktop["personalized"] == {"exposures": 4, "reward": 1.0, "rate": 0.25}
    assert desktop["holdout"] == {"exposures": 2, "reward": 2.0, "rate": 1.0}
    assert (desktop["lift"], desktop["relative_lift"]) == (pytest.approx(-0.75), pytest.approx(-0.75))
    # holdout variance 0: half-width = 1.96 * sqrt(0.25/4) = 0.49
    assert desktop["lift_ci"] == pytest.approx([-0.75 - Z * 0.25, -0.75 + Z * 0.25], abs=1e-6)
    assert desktop["lift_ci"][1] < 0

    check_arms(mobile["arms"], {"a": (0, 0), "b": (4, 3), "c": (2, 0)})
    check_arms(desktop["arms"], {"a": (2, 1), "b": (2, 0), "c": (0, 0)})
    # The segments add up to the whole.
    for group in ("personalized", "holdout"):
        assert (
            mobile[group]["exposures"] + desktop[group]["exposures"] == report["holdout"][group]["exposures"]
        )


def test_allocation_history_and_segment_features_come_from_published_snapshots(
    store: Store, hero: ExperimentRecord, tmp_path: Path
) -> None:
    clock = [NOW]
    kv = LocalKVPublisher(LocalKV(tmp_path))
    for _ in range(2):
        clock[0] += 60_000
        result = publish_experiment(
            store, kv, hero, Metrics(), now_ms=lambda: clock[0], force=True, draws=10_000
        )
        assert result.published
    report = build_report(store, hero, clock[0]).to_dict()
    history = store.snapshot_history("hero")
    assert [s["version"] for s in history] == [2, 1]

    assert report["snapshots"] == [
        {"version": s["version"], "created_ms": s["created_ms"], "size": s["size"]} for s in history
    ]
    assert report["snapshots"][0]["created_ms"] == NOW + 120_000
    assert report["allocation_history"] == [
        {
            "version": s["version"],
            "created_ms": s["created_ms"],
            "allocation": {
                arm: pytest.approx(p, abs=1e-6)
                for arm, p in s["summary"]["segments"][0]["allocation"].items()
            },
        }
        for s in reversed(history)
    ]
    latest = {segment["key"]: segment for segment in history[0]["summary"]["segments"]}
    assert [row["allocation"] for row in report["arms"]] == [
        pytest.approx(latest["all"]["allocation"][arm], abs=1e-6) for arm in ("a", "b", "c")
    ]
    assert sum(row["allocation"] for row in report["arms"]) == pytest.approx(1.0, abs=1e-5)
    mobile, desktop = report["segments"]
    assert mobile["features"] == {"device": "mobile"}
    assert desktop["features"] == {"device": "desktop"}
    assert [row["allocation"] for row in desktop["arms"]] == [
        pytest.approx(latest["device:desktop"]["allocation"][arm], abs=1e-6) for arm in ("a", "b", "c")
    ]


def test_fractional_rewards_use_their_own_variance(store: Store) -> None:
    record = store.create_experiment(spec(reward={"kind": "numeric", "max_value": 100.0}), NOW)
    put(
        store,
        [
            exp(1, "b", "personalized", "all", MOBILE),
            exp(2, "b", "personalized", "all", MOBILE),
            exp(3, "c", "personalized", "all", MOBILE),
            exp(4, "a", "holdout", "all", MOBILE),
            exp(5, "a", "holdout", "all", MOBILE),
            outcome(1, value=25.0),  # 0.25
            outcome(2, value=80.0),  # 0.8
            outcome(4, value=50.0),  # 0.5
            outcome(5, value=250.0),  # capped at 1
        ],
        NOW,
    )
    report = build_report(store, record, NOW).to_dict()
    assert report["reward_kind"] == "numeric"
    holdout = report["holdout"]
    assert holdout["personalized"] == {"exposures": 3, "reward": 1.05, "rate": 0.35}
    assert holdout["holdout"] == {"exposures": 2, "reward": 1.5, "rate": 0.75}
    assert holdout["lift"] == pytest.approx(-0.4)
    # var_p = (0.7025 - 1.05^2/3) / 2 = 0.1675, var_h = (1.25 - 1.5^2/2) / 1 = 0.125
    assert holdout["lift_ci"] == pytest.approx(lift_ci([0.25, 0.8, 0.0], [0.5, 1.0]), abs=1e-6)
    half = Z * math.sqrt(0.1675 / 3 + 0.125 / 2)
    assert holdout["lift_ci"] == pytest.approx([-0.4 - half, -0.4 + half], abs=1e-6)
    b = report["arms"][1]
    assert (b["exposures"], b["conversions"], b["reward"], b["rate"]) == (2, 2, 1.05, 0.525)
    assert b["posterior_mean"] == pytest.approx(2.05 / 4.0)  # Beta(1 + 1.05, 1 + 0.95)


def test_an_experiment_without_data(store: Store) -> None:
    record = store.create_experiment(spec(), NOW)
    report = build_report(store, record, NOW).to_dict()
    assert report["holdout"] == {
        "personalized": {"exposures": 0, "reward": 0.0, "rate": None},
        "holdout": {"exposures": 0, "reward": 0.0, "rate": None},
        "lift": None,
        "lift_ci": None,
        "relative_lift": None,
    }
    assert report["segments"] == []
    for row in report["arms"]:
        assert (row["exposures"], row["rate"], row["posterior_mean"]) == (0, None, 0.5)
        assert row["prob_best"] == pytest.approx(1 / 3, abs=0.015)
    assert report["outcomes"] == {"joined": 0, "late": 0, "pending": 0, "extra": 0}
    assert (report["counters"], report["alerts"], report["ope"]) == ({}, [], None)


def test_no_lift_interval_from_a_single_holdout_exposure(store: Store) -> None:
    record = store.create_experiment(spec(), NOW)
    put(
        store,
        [
            exp(1, "b", "personalized", "all", MOBILE),
            exp(2, "b", "personalized", "all", MOBILE),
            exp(3, "a", "holdout", "all", MOBILE),
            outcome(1),
        ],
        NOW,
    )
    holdout = build_report(store, record, NOW).to_dict()["holdout"]
    # 0.5 - 0: a lift, but one holdout exposure has no variance estimate, and rate_h = 0 no ratio.
    assert (holdout["lift"], holdout["lift_ci"], holdout["relative_lift"]) == (0.5, None, None)


def test_at_most_100_segments_busiest_first(store: Store) -> None:
    record = store.create_experiment(spec(), NOW)
    events = [exp(i, "b", "personalized", f"s-{i:03d}", MOBILE) for i in range(105)]
    events.append(exp(500, "b", "holdout", "s-104", MOBILE))
    put(store, events, NOW)
    segments = build_report(store, record, NOW).to_dict()["segments"]
    assert len(segments) == 100
    assert segments[0]["segment"] == "s-104" and segments[0]["exposures"] == 2
    # Ties in exposures go by key.
    assert [s["segment"] for s in segments[1:4]] == ["s-000", "s-001", "s-002"]


def gate_details(snips: float, passed: bool) -> dict[str, Any]:
    """An evaluation as control_plane.learning.publish's promotion gate stores it."""
    result = {"ips": snips, "snips": snips, "dr": snips, "ess": 50.0, "n": 100, "ips_se": 0.01, "dr_se": 0.01}
    return {
        "candidate": result,
        "current": {**result, "snips": 0.5},
        "current_version": 1,
        "tolerance": 0.005,
        "exposures": 100,
        "passed": passed,
    }


def test_ope_is_the_newest_gate_evaluation_among_alerts(store: Store, hero: ExperimentRecord) -> None:
    old, new = gate_details(0.1, False), gate_details(0.2, False)
    store.add_alert("hero", NOW + 1, "promotion_blocked", "snapshot 2 held back", old)
    store.add_alert("hero", NOW + 2, "promotion_blocked", "snapshot 3 held back", new)
    store.add_alert("hero", NOW + 3, "other", "something else", {"note": "no evaluation"})
    report = build_report(store, hero, NOW + 4).to_dict()
    assert report["alerts"] == store.alerts("hero")
    assert report["ope"] == {
        "at_ms": NOW + 2,
        "source": "alert",
        "kind": "promotion_blocked",
        "message": "snapshot 3 held back",
        "snapshot_version": None,
        "passed": False,
        "evaluation": new,
    }


def test_ope_of_a_published_snapshot_until_a_later_one_is_held_back(
    store: Store, hero: ExperimentRecord, tmp_path: Path
) -> None:
    kv = LocalKVPublisher(LocalKV(tmp_path))
    # Ten logged personalized exposures are enough for this gate, and any estimate passes it.
    gate = Gate(min_exposures=1, tolerance=1.0)
    clock = [NOW]
    for _ in range(2):
        clock[0] += 60_000
        result = publish_experiment(
            store,
            kv,
            hero,
            Metrics(),
            now_ms=lambda: clock[0],
            force=True,
            draws=10_000,
            gate=gate,
        )
        assert result.published
    summary = store.snapshot_history("hero")[0]["summary"]
    assert summary["gate"]["exposures"] == 10 and summary["gate"]["passed"] is True
    report = build_report(store, hero, NOW + 180_000).to_dict()
    assert report["ope"] == {
        "at_ms": NOW + 120_000,
        "source": "snapshot",
        "kind": "published",
        "message": None,
        "snapshot_version": 2,
        "passed": True,
        "evaluation": summary["gate"],
    }
    # An older held-back evaluation does not hide the published one; a newer one does.
    store.add_alert("hero", NOW + 90_000, "promotion_blocked", "older", gate_details(0.1, False))
    assert build_report(store, hero, NOW + 180_000).to_dict()["ope"]["source"] == "snapshot"
    store.add_alert("hero", NOW + 150_000, "promotion_blocked", "newer", gate_details(0.1, False))
    assert build_report(store, hero, NOW + 180_000).to_dict()["ope"]["message"] == "newer"


def test_report_reads_exposures_only_through_aggregates(
    store: Store, hero: ExperimentRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    table = "exposures"
    if store.events is not None:
        real, table = store.events.ch.rows, store.events.layout.table("exposures")

        def rows(sql: str, params: Any = None) -> Any:
            statements.append(sql)
            return real(sql, params)

        monkeypatch.setattr(store.events.ch, "rows", rows)
    event.listen(store.engine, "before_cursor_execute", record)
    try:
        build_report(store, hero, NOW)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    touching = [s for s in statements if f"FROM {table}" in s]
    assert len(touching) == 3
    assert all("GROUP BY" in s for s in touching)


def snapshot_row(version: int, summary: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "experiment": "hero",
        "version": version,
        "created_ms": NOW + version,
        "kv_key": "snap:hero",
        "size": 100 + version,
        "sha256": "0" * 64,
        "digest": f"d{version}",
        "spec_version": 1,
        "data": None,
        "summary": summary,
    }


def global_summary(allocation: dict[str, float], **extra: Any) -> dict[str, Any]:
    segment = {"key": "all", "features": {}, "parent": None, **extra, "allocation": allocation}
    return {"segments": [segment]}


def test_snapshot_lists_are_bounded_and_skip_rows_without_a_summary(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from control_plane.learning import report as module

    record = store.create_experiment(spec(), NOW)
    even = {"a": 0.2, "b": 0.3, "c": 0.5}
    store.record_snapshot(snapshot_row(1, global_summary(even)))
    store.record_snapshot(snapshot_row(2, None))  # written before summaries existed
    store.record_snapshot(snapshot_row(3, global_summary(even)))
    # A global segment longer than the prefix the report reads: it falls back to the whole summary.
    store.record_snapshot(snapshot_row(4, global_summary({"a": 0.6, "b": 0.3, "c": 0.1}, note="x" * 5000)))
    store.record_snapshot(snapshot_row(5, None))
    monkeypatch.setattr(module, "MAX_SNAPSHOTS", 2)
    monkeypatch.setattr(module, "MAX_HISTORY", 4)
    report = build_report(store, record, NOW).to_dict()
    assert report["snapshots"] == [
        {"version": 5, "created_ms": NOW + 5, "size": 105},
        {"version": 4, "created_ms": NOW + 4, "size": 104},
    ]
    assert report["allocation_history"] == [
        {"version": 3, "created_ms": NOW + 3, "allocation": even},
        {"version": 4, "created_ms": NOW + 4, "allocation": {"a": 0.6, "b": 0.3, "c": 0.1}},
    ]
    # The newest snapshot has no summary: no allocation to show.
    assert [row["allocation"] for row in report["arms"]] == [None, None, None]


# --- the JSON contract -------------------------------------------------------------------------

GOLDEN = Path(__file__).with_name("report_golden.json")


def renamed(event: dict[str, Any], key: str) -> dict[str, Any]:
    """``event`` of experiment ``key``, with ids of its own (the same ids would be duplicates)."""
    if key == "hero":
        return event
    return {
        **event,
        "experiment": key,
        "id": f"{key}-{event['id']}",
        "decision_id": "f" + event["decision_id"][1:],
    }


def populated(store: Store, tmp_path: Path, *, typed: bool = False) -> dict[str, Any]:
    """Reports over a store with everything a report shows: segments with features, two published
    snapshots (the second let through by the promotion gate), a held-back evaluation and plain
    alerts; one segments model and one contextual (feature effects)."""
    kv = LocalKVPublisher(LocalKV(tmp_path))
    gate = Gate(min_exposures=1, tolerance=1.0)
    reports = {}
    for key, model in (("hero", "segments"), ("ctx", "contextual")):
        record = store.create_experiment(spec(key=key, model=model, min_segment_units=1), NOW)
        put(store, [renamed(event, key) for event in EVENTS], NOW)
        for minutes in (1, 2):
            at = NOW + minutes * 60_000
            publish_experiment(
                store, kv, record, Metrics(), now_ms=lambda at=at: at, force=True, draws=10_000, gate=gate
            )
        store.add_alert(key, NOW + 90_000, "promotion_blocked", "older", gate_details(0.1, False))
        store.add_alert(key, NOW + 100_000, "guardrail", f"{key}: no details")
        report = build_report(store, record, NOW + 180_000)
        reports[key] = report if typed else report.to_dict()
    return reports


def same_json(got: Any, want: Any, where: str = "$") -> None:
    """Equal as JSON, keys in the same order; floats to 1e-9 (the gate's are not rounded, and a
    machine's SIMD sums may differ in the last bits)."""
    assert type(got) is type(want) or {type(got), type(want)} <= {int, float}, where
    if isinstance(want, dict):
        assert list(got) == list(want), where
        for name in want:
            same_json(got[name], want[name], f"{where}.{name}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            same_json(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
    else:
        assert got == want, where


def as_served(report: Any) -> Any:
    """The report as GET /v1/experiments/{key}/report sends it."""
    return json.loads(json.dumps(report, ensure_ascii=True, allow_nan=False, separators=(",", ":")))


def test_the_json_of_a_populated_report_is_what_it_was(store: Store, tmp_path: Path) -> None:
    # The golden file is the report before it was typed: the contract of docs/report.md.
    reports = {key: as_served(report) for key, report in populated(store, tmp_path).items()}
    assert reports["ctx"]["feature_effects"] and reports["hero"]["ope"]["source"] == "snapshot"
    want = json.loads(GOLDEN.read_text())
    if store.events is not None:
        # The SQL rollup's watermark: ClickHouse folds its deltas by merging parts, and keeps none.
        for report in want.values():
            del report["counters"]["folded_through"]
    same_json(reports, want)


def test_a_ranked_experiment_reports_floors_and_the_position_model(store: Store) -> None:
    items = [{"key": f"i{i}", "group": f"g{i % 2}"} for i in range(4)]
    ranked = ExperimentSpec.create(
        {
            "key": "recs",
            "arms": items,
            "default_arm": "i0",
            "holdout": 0.0,
            "ranking": {"slots": 2, "min_exposures": 30, "period_s": 86_400},
        }
    )
    record = store.create_experiment(ranked, NOW)
    rng = random.Random(4)
    events: list[dict[str, Any]] = []
    examined = (1.0, 0.5)
    for s in range(600):
        slate = f"{rng.getrandbits(128):032x}"
        for p, item in enumerate(rng.sample(["i0", "i1", "i2", "i3"], 2)):
            decision = position_id(slate, p)
            base = exposure(s, arm=item, ts=NOW - 1000, experiment="recs")
            events.append({**base, "id": f"x-{decision}", "decision_id": decision})
            if rng.random() < examined[p] * 0.4:
                events.append(
                    {**outcome(s), "id": f"o-{decision}", "decision_id": decision, "experiment": "recs"}
                )
    put(store, events, NOW)
    doc = build_report(store, record, NOW).to_dict()
    ranking = doc["ranking"]
    assert (ranking["slots"], ranking["quota"], ranking["groups"]["i3"]) == (2, 1, "g1")
    floors = ranking["floors"]
    shown = Counter(e["arm"] for e in events if e["type"] == "exposure")
    assert {row["item"]: row["shown"] for row in floors["items"]} == dict(shown)
    assert all(row["met"] for row in floors["items"]) and floors["min_exposures"] == 30
    model = ranking["position_model"]
    assert model["shown"] == 1200 and model["examination"][0] == 1.0
    assert model["examination"][1] == pytest.approx(0.5, abs=0.1)
    assert "ranking" not in build_report(store, store.create_experiment(spec(), NOW), NOW).to_dict()
