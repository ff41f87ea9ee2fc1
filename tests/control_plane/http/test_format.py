"""The shared formatters: one way to write a rate, a difference, a share, a count, a time."""

from __future__ import annotations

import pytest

from control_plane.http import _format as fmt
from tests.factories import NOW


def test_rates_and_differences_by_reward_kind() -> None:
    assert (fmt.rate(0.0525, True), fmt.rate(0.0525, False), fmt.rate(None, True)) == ("5.25%", "0.0525", "—")
    assert (fmt.diff(0.0333, True), fmt.diff(-1.5, False), fmt.diff(None, False)) == ("+3.33 pp", "-1.5", "—")
    assert fmt.interval((-0.03, 0.09), lambda v: fmt.diff(v, True)) == "[-3.00 pp, +9.00 pp]"
    assert fmt.interval(None, str) == ""


def test_shares_counts_and_times() -> None:
    assert (fmt.share(0.3), fmt.share(None)) == ("30.0%", "—")
    assert (fmt.count(1234567), fmt.count(2.5)) == ("1,234,567", "2.5")
    assert fmt.utc(NOW) == "2026-05-28 20:26:40 UTC"


@pytest.mark.parametrize(
    ("ms", "shown"),
    [(-5, "0 s"), (90_000, "90 s"), (120_000, "2 min"), (7_200_000, "2.0 h"), (172_800_000, "2.0 d")],
)
def test_ages_pick_their_unit(ms: int, shown: str) -> None:
    assert fmt.age(ms) == shown


def test_tick_labels_show_as_many_decimals_as_the_step_needs() -> None:
    assert fmt.number_ticks([0.0, 2.5, 5.0])(5.0) == "5.0"
    assert fmt.percent_ticks([0.0, 0.025])(0.025) == "2.5%"
    assert (fmt.points_ticks([-0.02, 0.0, 0.02])(0.02), fmt.points_ticks([0.0, 0.01])(0.0)) == ("+2", "0")
