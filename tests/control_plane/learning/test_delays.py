"""Young exposures count only as far as their outcomes can have arrived."""

from __future__ import annotations

import pytest

from control_plane.learning.delays import MIN_DELAYS, delay_cdf, mature_cells, maturity, young_exposures
from control_plane.storage.stats import CellStats
from control_plane.storage.store import Store
from tests.control_plane.event_stores import put
from tests.factories import HOUR, NOW, exposure, outcome
from tests.factories import spec as make_spec


def test_a_young_exposure_counts_as_the_share_of_outcomes_already_due() -> None:
    cells = {("mobile", "search"): {"a": CellStats(100.0, 10.0), "b": CellStats(50.0, 5.0)}}
    young = {(("mobile", "search"), "a"): [(1000.0, 40)]}
    out, left_out = mature_cells(cells, young, lambda age: 0.25, None)
    assert out[("mobile", "search")]["a"] == CellStats(70.0, 10.0)  # 40 young count as 10
    assert out[("mobile", "search")]["b"] == cells[("mobile", "search")]["b"]
    assert left_out == pytest.approx(30.0)
    # Never below the rewards already seen, and decayed like the cell itself.
    out, _ = mature_cells(cells, {(("mobile", "search"), "a"): [(0.0, 100)]}, lambda age: 0.0, None)
    assert out[("mobile", "search")]["a"].exposures == 10.0
    out, _ = mature_cells(cells, {(("mobile", "search"), "a"): [(3600_000.0, 40)]}, lambda age: 0.0, 3600.0)
    assert out[("mobile", "search")]["a"].exposures == pytest.approx(80.0)


@pytest.fixture
def hero(any_store: Store) -> Store:
    any_store.create_experiment(
        make_spec(reward={"kind": "binary", "window_s": 24 * 3600}), NOW - 10 * 24 * HOUR
    )
    return any_store


def test_delays_are_measured_on_matured_exposures_first(hero: Store) -> None:
    spec = hero.get_experiment("hero").spec  # type: ignore[union-attr]
    events = []
    for i in range(MIN_DELAYS + 10):  # two days old: windows closed; outcomes 1 h later
        events += [exposure(i, ts=NOW - 48 * HOUR), outcome(i, ts=NOW - 47 * HOUR)]
    for i in range(100, 100 + MIN_DELAYS):  # recent and fast: not used while matured ones suffice
        events += [exposure(i, ts=NOW - HOUR), outcome(i, ts=NOW - HOUR + 1000)]
    put(hero, events, NOW)
    cdf, count, source = delay_cdf(hero, spec, NOW)
    assert (count, source) == (MIN_DELAYS + 10, "matured") and cdf is not None
    assert cdf(HOUR - 1) == 0.0 and cdf(HOUR) == 1.0


def test_without_enough_delays_nothing_is_corrected(hero: Store) -> None:
    spec = hero.get_experiment("hero").spec  # type: ignore[union-attr]
    put(hero, [exposure(1, ts=NOW - HOUR), outcome(1, ts=NOW - HOUR + 5)], NOW)
    cells = hero.cells(spec, NOW)
    assert maturity(hero, spec, cells, NOW)[0] == cells
    assert maturity(hero, spec, cells, NOW)[2].source == "none"


def test_recent_traffic_no_longer_looks_like_failures(hero: Store) -> None:
    spec = hero.get_experiment("hero").spec  # type: ignore[union-attr]
    events = []
    # Arm b converts 20 % of the time, two hours after the exposure.
    for i in range(200):
        events.append(exposure(i, arm="b", ts=NOW - 30 * HOUR + i * 1000))
        if i % 5 == 0:
            events.append(outcome(i, ts=NOW - 28 * HOUR + i * 1000))
    for i in range(200, 400):  # the last hour: their outcomes cannot have come yet
        events.append(exposure(i, arm="b", ts=NOW - HOUR // 2))
    put(hero, events, NOW)
    young = young_exposures(hero, spec, NOW)
    assert sum(n for ages in young.values() for _, n in ages) == 200
    cells = hero.cells(spec, NOW)
    raw = cells[("mobile", "search")]["b"]
    corrected, recent, report = maturity(hero, spec, cells, NOW, recent=300)
    fixed = corrected[("mobile", "search")]["b"]
    assert raw.reward / raw.exposures == pytest.approx(0.1)  # what the learner used to see
    assert fixed.reward / fixed.exposures == pytest.approx(0.2)
    assert report.source == "matured" and report.discounted == pytest.approx(200.0)
    assert report.horizon_ms == 2 * HOUR  # every outcome came two hours after its exposure
    # The newest 300 exposures: the 200 young ones (none due yet) and 100 of the old.
    newest = recent[("mobile", "search")]["b"]
    assert newest.exposures == pytest.approx(100.0) and newest.reward == pytest.approx(20.0)
    assert maturity(hero, spec, cells, NOW, recent=10_000)[1] == {}  # fewer in all: nothing older


def test_instant_outcomes_against_a_long_window_discount_almost_nothing(hero: Store) -> None:
    """Beacons seconds after the exposure, a 24 h window: ages are read on the delays' scale."""
    spec = hero.get_experiment("hero").spec  # type: ignore[union-attr]
    events = []
    for i in range(400):
        events.append(exposure(i, ts=NOW - 60_000 + i * 100))
        if i % 4 == 0:
            events.append(outcome(i, ts=NOW - 60_000 + i * 100 + 5))
    put(hero, events, NOW)
    cells = hero.cells(spec, NOW)
    corrected, _, report = maturity(hero, spec, cells, NOW)
    assert report.source == "all joined" and report.horizon_ms == 5
    assert report.discounted < 1.0  # at most the exposures of the last few milliseconds
    cell = corrected[("mobile", "search")]["b"]
    assert cell.reward / cell.exposures == pytest.approx(0.25, abs=0.005)


def test_the_newest_exposures_lose_only_their_own_missing_outcomes(hero: Store) -> None:
    """Outcomes that take longer than the newest exposures span: the young exposures before
    those must not be discounted from them (they made the newest data look better than it was)."""
    spec = hero.get_experiment("hero").spec  # type: ignore[union-attr]
    events = []
    for i in range(40):  # matured: delays of 0, 3, 6, ... 117 minutes
        events += [exposure(i, ts=NOW - 48 * HOUR), outcome(i, ts=NOW - 48 * HOUR + i * 180_000)]
    for i in range(100, 300):  # 90 minutes old: a quarter of their outcomes are still to come
        events.append(exposure(i, arm="b", ts=NOW - 90 * 60_000))
    for i in range(300, 400):  # the newest 100, 10 minutes old: ~90 % still to come
        events.append(exposure(i, arm="b", ts=NOW - 10 * 60_000))
    put(hero, events, NOW)
    cells = hero.cells(spec, NOW)
    corrected, recent, _ = maturity(hero, spec, cells, NOW, recent=100)
    newest = recent[("mobile", "search")]["b"]
    # 100 exposures x F(about 10 min) = 3/40 or 4/40 (the age is read at its bucket's middle).
    assert 7.5 <= newest.exposures <= 10.0
    # The totals still lose every young exposure's share: 40 matured, 200 x F(90 min), 100 x F(10 min).
    everything = corrected[("mobile", "search")]["b"]
    assert 40 + 200 * 30 / 40 + 7.5 <= everything.exposures <= 40 + 200 * 31 / 40 + 10.0
