"""control_plane.events.credit: outcomes become rewards, joined to their exposure or from their token.

The rules hold wherever events are kept (``any_hero``: SQLite, PostgreSQL, ClickHouse), so most tests
write and read through tests/control_plane/event_stores.py."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.storage.schema import outcomes
from control_plane.storage.store import Store
from tests.control_plane.event_stores import put, recompute, rewards, totals
from tests.control_plane.events.conftest import cells
from tests.factories import HOUR, NOW, exposure, outcome, spec


def test_binary_outcomes_join_once_within_the_window(any_hero: Store) -> None:
    hero = any_hero
    put(hero, [exposure(1), exposure(2), exposure(3)])
    result = put(hero, [outcome(1), outcome(1, event="o-again"), outcome(2, ts=NOW + 25 * HOUR)])
    assert (result.joined, result.late) == (2, 1)
    assert cells(hero) == {("mobile", "search"): {"b": (3, 1)}}
    assert hero.counters("hero") == {"late_outcomes": 1, "extra_outcomes": 1}
    assert hero.outcome_statuses("hero") == {"joined": 1, "extra": 1, "late": 1}


def test_outcome_before_its_exposure_waits_then_joins(any_hero: Store) -> None:
    hero = any_hero
    first = put(hero, [outcome(7)])
    assert first.pending == 1
    assert cells(hero) == {}
    assert hero.outcome_statuses("hero") == {"pending": 1}
    second = put(hero, [exposure(7)])
    assert second.joined == 1
    assert cells(hero) == {("mobile", "search"): {"b": (1, 1)}}
    assert hero.outcome_statuses("hero") == {"joined": 1}


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
    return put(store, events, now, secret=SECRET)


def test_a_tokened_outcome_is_credited_before_its_exposure_arrives(any_hero: Store) -> None:
    hero = any_hero
    result = ingest_tokened(hero, [tokened(1)])
    assert (result.joined, result.pending) == (1, 0)  # nothing waits for the exposure
    assert totals(hero, "hero") == {('["mobile", "search"]', "b"): (0.0, 1.0)}
    ingest_tokened(hero, [exposure(1)])
    assert cells(hero) == {("mobile", "search"): {"b": (1, 1)}}  # not credited twice
    assert rewards(hero, "hero") == {f"{1:032x}": 1.0}  # evaluation reads the decision's reward
    assert hero.outcome_statuses("hero") == {"joined": 1}


def test_a_binary_decision_is_credited_once_across_tokened_and_joined_outcomes(any_hero: Store) -> None:
    hero = any_hero
    ingest_tokened(hero, [exposure(1), exposure(2)])
    # Decision 1: a joined beacon first, then a tokened one; decision 2: two tokened ones.
    ingest_tokened(hero, [outcome(1)])
    result = ingest_tokened(hero, [tokened(1, event="o-1b"), tokened(2), tokened(2, event="o-2b")])
    assert result.joined == 3
    assert cells(hero) == {("mobile", "search"): {"b": (2, 2)}}
    assert hero.counters("hero") == {"extra_outcomes": 2}


def test_a_tokened_outcome_past_the_window_is_late_by_the_tokens_own_time(any_hero: Store) -> None:
    hero = any_hero
    result = ingest_tokened(hero, [tokened(1, decided=NOW - 25 * HOUR)])
    assert result.late == 1 and cells(hero) == {}
    assert hero.counters("hero") == {"late_outcomes": 1}


def test_holdout_tokens_reward_the_exposure_but_no_cell(any_hero: Store) -> None:
    hero = any_hero
    ingest_tokened(hero, [exposure(1, reason="holdout"), tokened(1, reason="holdout")])
    assert cells(hero) == {}
    assert rewards(hero, "hero") == {f"{1:032x}": 1.0}


def test_a_token_that_does_not_verify_falls_back_to_the_join(any_hero: Store) -> None:
    hero = any_hero
    from control_plane.events.ingest import verified_tokens

    forged = {**tokened(1), "token": tokened(1)["token"][:-1] + "0"}
    other = {**tokened(2), "decision_id": f"{3:032x}"}  # a valid token for another decision
    assert verified_tokens(SECRET, [forged, other]) == {}
    result = ingest_tokened(hero, [forged])
    assert result.pending == 1 and cells(hero) == {}
    ingest_tokened(hero, [exposure(1)])
    assert cells(hero) == {("mobile", "search"): {"b": (1, 1)}}


def test_erasure_takes_back_a_tokened_credit_whose_exposure_never_came(any_hero: Store) -> None:
    hero = any_hero
    from control_plane.storage import privacy

    def raw() -> tuple[float, float]:
        (cell,) = totals(hero, "hero").values()
        return cell

    ingest_tokened(hero, [{**tokened(1), "unit": "gone"}, tokened(2), exposure(2)])
    assert raw() == (1, 2)
    assert privacy.erase(hero, "gone")["outcomes"] == 1
    assert raw() == (1, 1)
    assert totals(hero, "hero") == recompute(hero, "hero")


def test_an_outcome_joined_before_credits_were_recorded_still_counts_once(hero: Store) -> None:
    ingest_tokened(hero, [exposure(1), outcome(1)])
    with hero.engine.begin() as conn:  # as migration 0005 left outcomes joined before it
        conn.execute(outcomes.update().values(credited=None))
    ingest_tokened(hero, [tokened(1, event="o-later")])
    assert cells(hero) == {("mobile", "search"): {"b": (1, 1)}}
    assert hero.counters("hero") == {"extra_outcomes": 1}


def test_numbers_of_either_kind_in_one_column(any_hero: Store) -> None:
    hero = any_hero
    # PostgreSQL's array parameters refuse a list mixing ints and floats.
    result = put(hero, [{**exposure(1), "propensity": 1}, {**exposure(2), "propensity": 0.5}])
    assert result.accepted["exposure"] == 2


def test_a_token_counts_only_for_the_row_it_came_with(any_hero: Store) -> None:
    hero = any_hero
    # Two beacons chose the same id: the first is stored; the second's token must not ride on it.
    first = {**outcome(1, event="order")}
    second = tokened(2, event="order")
    ingest_tokened(hero, [exposure(1), exposure(2), first, second])
    assert rewards(hero, "hero") == {f"{1:032x}": 1.0, f"{2:032x}": 0.0}
    assert cells(hero) == {("mobile", "search"): {"b": (2, 1)}}


def test_erasing_a_future_stamped_exposure_takes_back_exactly_what_it_added(any_store: Store) -> None:
    from control_plane.storage import privacy

    store = any_store
    store.create_experiment(spec(half_life_s=60.0), NOW)
    put(store, [exposure(i) for i in range(1, 11)])
    put(store, [{**exposure(99, ts=NOW + 20 * 60_000), "unit": "bob"}])
    privacy.erase(store, "bob")
    got = store.cells(spec(half_life_s=60.0), NOW)[("mobile", "search")]["b"].exposures
    assert got == pytest.approx(10.0)
