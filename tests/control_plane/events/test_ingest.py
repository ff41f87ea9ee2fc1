from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select, text

from control_plane.events.ingest import ingest
from control_plane.storage import stats
from control_plane.storage.schema import exposures, outcomes
from control_plane.storage.store import Store
from tests.factories import HOUR, NOW, exposure, outcome, spec


def cells(
    store: Store, now: int = NOW, **overrides: Any
) -> dict[tuple[str, ...], dict[str, tuple[float, float]]]:
    return {
        path: {arm: (round(c.exposures, 6), round(c.reward, 6)) for arm, c in arms.items()}
        for path, arms in store.cells(spec(**overrides), now).items()
    }


@pytest.fixture
def hero(store: Store) -> Store:
    store.create_experiment(spec(), NOW)
    return store


def test_exposures_build_cells_by_feature_path(hero: Store) -> None:
    result = ingest(
        hero, [exposure(1), exposure(2), exposure(3, arm="c", context={"device": "desktop"})], None, NOW
    )
    assert result.accepted["exposure"] == 3
    assert cells(hero) == {("mobile", "search"): {"b": (2, 0)}, ("desktop", "unknown"): {"c": (1, 0)}}


def test_events_are_idempotent(hero: Store) -> None:
    batch = [exposure(1), outcome(1)]
    ingest(hero, batch, None, NOW)
    again = ingest(hero, batch, None, NOW)
    assert (again.accepted, again.duplicates) == ({"exposure": 0, "outcome": 0, "stitch": 0}, 2)
    assert cells(hero) == {("mobile", "search"): {"b": (1, 1)}}


def test_only_personalized_decisions_teach_the_learner(hero: Store) -> None:
    ingest(
        hero,
        [
            exposure(1, reason="holdout", arm="a"),
            exposure(2, reason="stale", arm="a"),
            exposure(3, reason="consent", arm="a", unit=None, context={}),
        ],
        None,
        NOW,
    )
    assert cells(hero) == {}
    with hero.engine.connect() as conn:
        assert conn.execute(select(exposures)).rowcount != 0
        assert len(conn.execute(select(exposures.c.decision_id)).all()) == 3


def test_binary_outcomes_join_once_within_the_window(hero: Store) -> None:
    ingest(hero, [exposure(1), exposure(2), exposure(3)], None, NOW)
    result = ingest(
        hero, [outcome(1), outcome(1, event="o-again"), outcome(2, ts=NOW + 25 * HOUR)], None, NOW
    )
    assert (result.joined, result.late) == (2, 1)
    assert cells(hero) == {("mobile", "search"): {"b": (3, 1)}}
    assert hero.counters("hero") == {"late_outcomes": 1, "extra_outcomes": 1}
    with hero.engine.connect() as conn:
        statuses = dict(conn.execute(select(outcomes.c.event_id, outcomes.c.status)).all())
    assert statuses == {"o-1": "joined", "o-again": "extra", "o-2": "late"}


def test_a_changed_reward_window_applies_to_the_next_batch(hero: Store) -> None:
    # Ingestion keeps parsed specs between batches: a PATCH must still take effect at once.
    ingest(hero, [exposure(1), exposure(2)], None, NOW)
    assert ingest(hero, [outcome(1, ts=NOW + 25 * HOUR)], None, NOW).late == 1  # default window: 24 h
    hero.update_experiment("hero", {"reward": {"kind": "binary", "window_s": 48 * 3600}}, NOW)
    assert ingest(hero, [outcome(2, ts=NOW + 25 * HOUR)], None, NOW).joined == 1


def test_replay_signatures_are_kept_past_the_tolerance_then_purged(hero: Store) -> None:
    from control_plane.events.ingest import REPLAY_MEMORY_S
    from control_plane.storage.schema import seen_batches

    ingest(hero, [exposure(1)], "a" * 64, NOW)
    ingest(hero, [exposure(2)], "b" * 64, NOW + 120_000)  # too young to purge
    ingest(hero, [exposure(3)], "c" * 64, NOW + (REPLAY_MEMORY_S + 60) * 1000)
    with hero.engine.connect() as conn:
        kept = set(conn.execute(select(seen_batches.c.signature)).scalars())
    assert kept == {"b" * 64, "c" * 64}
    assert REPLAY_MEMORY_S > 300  # longer than the signature tolerance


def test_outcome_before_its_exposure_waits_then_joins(hero: Store) -> None:
    first = ingest(hero, [outcome(7)], None, NOW)
    assert first.pending == 1
    assert cells(hero) == {}
    assert hero.outcome_statuses("hero") == {"pending": 1}
    second = ingest(hero, [exposure(7)], None, NOW)
    assert second.joined == 1
    assert cells(hero) == {("mobile", "search"): {"b": (1, 1)}}
    assert hero.outcome_statuses("hero") == {"joined": 1}


def test_numeric_rewards_are_scaled_and_capped_per_exposure(store: Store) -> None:
    store.create_experiment(spec(reward={"kind": "numeric", "max_value": 100.0}), NOW)
    ingest(
        store,
        [
            exposure(1),
            exposure(2),
            outcome(1, value=25.0),
            outcome(2, value=80.0),
            outcome(2, value=80.0, event="o-2b"),
        ],
        None,
        NOW,
    )
    got = cells(store, reward={"kind": "numeric", "max_value": 100.0})
    assert got == {("mobile", "search"): {"b": (2, 1.25)}}  # 0.25 + min(0.8 + 0.8, 1)


def test_decay_weighs_old_evidence_less(store: Store) -> None:
    store.create_experiment(spec(half_life_s=3600), NOW)
    events = [exposure(1, ts=NOW), exposure(2, ts=NOW + HOUR), exposure(3, ts=NOW - HOUR)]
    ingest(store, events, None, NOW + HOUR)
    got = cells(store, NOW + HOUR, half_life_s=3600)
    # weights at NOW + 1h: 0.5 (NOW), 1 (NOW + 1h), 0.25 (NOW - 1h)
    assert got[("mobile", "search")]["b"][0] == pytest.approx(1.75)


def test_statistics_do_not_depend_on_how_events_are_batched(store: Store) -> None:
    """One batch of many cells (bulk read-modify-write) == the same events one per batch, shuffled."""
    import random

    for key in ("hero", "twin"):
        store.create_experiment(spec(key=key, half_life_s=3600), NOW)
    rng = random.Random(7)
    contexts = [{"device": d, "source": s} for d in ("mobile", "desktop") for s in ("search", "ad", "direct")]
    events: list[dict[str, Any]] = []
    for i in range(120):
        events.append(
            exposure(
                i + 1,
                arm=rng.choice("abc"),
                ts=NOW + rng.randrange(-2 * HOUR, 2 * HOUR),
                context=rng.choice(contexts),
                reason=rng.choice(["personalized"] * 5 + ["holdout"]),
            )
        )
        if rng.random() < 0.4:
            events.append(outcome(i + 1, ts=events[-1]["ts"] + rng.randrange(1, 60_000)))
    twin = [
        {**e, "experiment": "twin", "id": "t" + e["id"], "decision_id": "f" + e["decision_id"][1:]}
        for e in events
    ]
    ingest(store, events, None, NOW)
    rng.shuffle(twin)
    for event in twin:
        ingest(store, [event], None, NOW)

    def table(key: str) -> dict[tuple[str, str], tuple[float, ...]]:
        with store.engine.connect() as conn:
            raw = stats.totals(conn, key)
        decayed = store.cells(spec(key=key, half_life_s=3600), NOW + 3 * HOUR)
        return {
            (path, arm): (
                raw[path, arm].exposures,
                raw[path, arm].reward,
                decayed[tuple(json.loads(path))][arm].exposures,
                decayed[tuple(json.loads(path))][arm].reward,
            )
            for path, arm in raw
        }

    hero, twin_cells = table("hero"), table("twin")
    assert len(hero) == 18 and sum(v[0] for v in hero.values()) > 80
    assert hero.keys() == twin_cells.keys()
    for cell, values in hero.items():
        assert values == pytest.approx(twin_cells[cell], rel=1e-9), cell
    # Folding the deltas into the base changes nothing a reader sees.
    store.rollup(spec(key="hero", half_life_s=3600))
    for cell, values in table("hero").items():
        assert values == pytest.approx(twin_cells[cell], rel=1e-9), cell


def test_unknown_experiments_are_kept_and_counted(hero: Store) -> None:
    result = ingest(hero, [exposure(1, experiment="ghost")], None, NOW)
    assert result.accepted["exposure"] == 1
    assert hero.counters("ghost") == {"unknown_experiment": 1}


def test_no_raw_unit_id_is_stored(hero: Store) -> None:
    stitch = {
        "type": "stitch",
        "id": "s-1",
        "ts": NOW,
        "anonymous_id": "anon-secret-id",
        "user_id": "alice@example",
    }
    ingest(hero, [exposure(1, unit="visitor-secret-id"), outcome(1), stitch], None, NOW)
    with hero.engine.connect() as conn:
        for table in ("exposures", "outcomes", "stitches"):
            dump = json.dumps([list(map(str, row)) for row in conn.execute(text(f"SELECT * FROM {table}"))])
            for raw in ("visitor-secret-id", "anon-secret-id", "alice@example", "u-1"):
                assert raw not in dump, (table, raw)


def test_a_failed_batch_leaves_nothing_behind(hero: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from control_plane.events import ingest as module

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(module.Cells, "flush", broken)
    with pytest.raises(RuntimeError):
        ingest(hero, [exposure(1), outcome(1)], None, NOW)
    monkeypatch.undo()
    with hero.engine.connect() as conn:
        assert conn.execute(select(exposures.c.decision_id)).all() == []
    assert ingest(hero, [exposure(1)], None, NOW).accepted["exposure"] == 1  # the resend is accepted


# --- outcomes credited from their decision token -------------------------------------------------

SECRET = "edge-secret-0123456789"


def tokened(
    i: int,
    *,
    value: float = 1.0,
    ts: int = NOW + 1000,
    event: str | None = None,
    decided: int = NOW,
    reason: str = "personalized",
    arm: str = "b",
) -> dict[str, Any]:
    """An outcome carrying its decision's token (as the edge's beacon route builds it)."""
    from core import DecisionToken, mint_token

    token = DecisionToken(
        f"{i:032x}", "hero", arm, {"device": "mobile", "source": "search"}, decided, 1, "", reason
    )
    return {**outcome(i, value=value, ts=ts, event=event), "token": mint_token(SECRET, token)}


def ingest_tokened(store: Store, events: list[dict[str, Any]], now: int = NOW) -> Any:
    from control_plane.events.ingest import verified_tokens

    return ingest(store, events, None, now, tokens=verified_tokens(SECRET, events))


def test_a_tokened_outcome_is_credited_before_its_exposure_arrives(hero: Store) -> None:
    result = ingest_tokened(hero, [tokened(1)])
    assert (result.joined, result.pending) == (1, 0)  # nothing waits for the exposure
    with hero.engine.connect() as conn:
        assert stats.totals(conn, "hero") == {('["mobile", "search"]', "b"): stats.Totals(0.0, 1.0)}
    ingest_tokened(hero, [exposure(1)])
    assert cells(hero) == {("mobile", "search"): {"b": (1, 1)}}  # not credited twice
    with hero.engine.connect() as conn:
        row = conn.execute(select(exposures.c.reward, exposures.c.outcomes)).one()
        assert tuple(row) == (1.0, 1)  # evaluation reads the reward from the exposure
        assert conn.execute(select(outcomes.c.status)).scalar() == "joined"


def test_a_binary_decision_is_credited_once_across_tokened_and_joined_outcomes(hero: Store) -> None:
    ingest_tokened(hero, [exposure(1), exposure(2)])
    # Decision 1: a joined beacon first, then a tokened one; decision 2: two tokened ones.
    ingest_tokened(hero, [outcome(1)])
    result = ingest_tokened(hero, [tokened(1, event="o-1b"), tokened(2), tokened(2, event="o-2b")])
    assert result.joined == 3
    assert cells(hero) == {("mobile", "search"): {"b": (2, 2)}}
    assert hero.counters("hero") == {"extra_outcomes": 2}


def test_a_tokened_outcome_past_the_window_is_late_by_the_tokens_own_time(hero: Store) -> None:
    result = ingest_tokened(hero, [tokened(1, decided=NOW - 25 * HOUR)])
    assert result.late == 1 and cells(hero) == {}
    assert hero.counters("hero") == {"late_outcomes": 1}


def test_holdout_tokens_reward_the_exposure_but_no_cell(hero: Store) -> None:
    ingest_tokened(hero, [exposure(1, reason="holdout"), tokened(1, reason="holdout")])
    assert cells(hero) == {}
    with hero.engine.connect() as conn:
        assert conn.execute(select(exposures.c.reward)).scalar() == 1.0


def test_a_token_that_does_not_verify_falls_back_to_the_join(hero: Store) -> None:
    from control_plane.events.ingest import verified_tokens

    forged = {**tokened(1), "token": tokened(1)["token"][:-1] + "0"}
    other = {**tokened(2), "decision_id": f"{3:032x}"}  # a valid token for another decision
    assert verified_tokens(SECRET, [forged, other]) == {}
    result = ingest_tokened(hero, [forged])
    assert result.pending == 1 and cells(hero) == {}
    ingest_tokened(hero, [exposure(1)])
    assert cells(hero) == {("mobile", "search"): {"b": (1, 1)}}


def test_erasure_takes_back_a_tokened_credit_whose_exposure_never_came(hero: Store) -> None:
    from control_plane.storage import privacy

    def raw() -> tuple[float, float]:
        with hero.engine.connect() as conn:
            (cell,) = stats.totals(conn, "hero").values()
        return cell.exposures, cell.reward

    ingest_tokened(hero, [{**tokened(1), "unit": "gone"}, tokened(2), exposure(2)])
    assert raw() == (1, 2)
    assert privacy.erase(hero, "gone")["outcomes"] == 1
    assert raw() == (1, 1)
    with hero.engine.connect() as conn:
        kept, recomputed = stats.totals(conn, "hero"), stats.recompute(conn, "hero")
    assert {k: (v.exposures, v.reward) for k, v in kept.items()} == {
        k: (v.exposures, v.reward) for k, v in recomputed.items()
    }


def test_an_outcome_joined_before_credits_were_recorded_still_counts_once(hero: Store) -> None:
    ingest_tokened(hero, [exposure(1), outcome(1)])
    with hero.engine.begin() as conn:  # as migration 0005 left outcomes joined before it
        conn.execute(outcomes.update().values(credited=None))
    ingest_tokened(hero, [tokened(1, event="o-later")])
    assert cells(hero) == {("mobile", "search"): {"b": (1, 1)}}
    assert hero.counters("hero") == {"extra_outcomes": 1}


def test_numbers_of_either_kind_in_one_column(hero: Store) -> None:
    # PostgreSQL's array parameters refuse a list mixing ints and floats.
    result = ingest(hero, [{**exposure(1), "propensity": 1}, {**exposure(2), "propensity": 0.5}], None, NOW)
    assert result.accepted["exposure"] == 2


def test_a_token_counts_only_for_the_row_it_came_with(hero: Store) -> None:
    # Two beacons chose the same id: the first is stored; the second's token must not ride on it.
    first = {**outcome(1, event="order")}
    second = tokened(2, event="order")
    ingest_tokened(hero, [exposure(1), exposure(2), first, second])
    with hero.engine.connect() as conn:
        rewards = dict(conn.execute(select(exposures.c.decision_id, exposures.c.reward)).all())
    assert rewards == {f"{1:032x}": 1.0, f"{2:032x}": 0.0}
    assert cells(hero) == {("mobile", "search"): {"b": (2, 1)}}


def test_erasing_a_future_stamped_exposure_takes_back_exactly_what_it_added(store: Store) -> None:
    from control_plane.storage import privacy

    store.create_experiment(spec(half_life_s=60.0), NOW)
    ingest(store, [exposure(i) for i in range(1, 11)], None, NOW)
    ingest(store, [{**exposure(99, ts=NOW + 20 * 60_000), "unit": "bob"}], None, NOW)
    privacy.erase(store, "bob")
    got = store.cells(spec(half_life_s=60.0), NOW)[("mobile", "search")]["b"].exposures
    assert got == pytest.approx(10.0)
