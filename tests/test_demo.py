"""`perch demo` end to end, small: real processes, real HTTP, the report and the files."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from cli.demo_report import summarize
from cli.demo_visitors import ARMS, Outcome, oracle_arm, population, true_rate

pytestmark = pytest.mark.process


def test_population_is_reproducible_and_mixed() -> None:
    visits = population(4000, seed=1)
    assert visits == population(4000, seed=1)
    assert {v.device for v in visits} == {"desktop", "mobile", "tablet"}
    assert 0.05 < sum(not v.consent for v in visits) / len(visits) < 0.11
    assert len({v.visitor for v in visits}) < len(visits)  # returning visitors
    # The best arm is not the same for everyone.
    assert len({oracle_arm(d, s) for d in ("desktop", "mobile", "tablet") for s in ("search", "social")}) >= 3
    assert all(0 < true_rate(v.device, v.source, a) < 0.1 for v in visits[:50] for a in ARMS)


def test_summary_compares_against_uniform_and_oracle() -> None:
    visits = population(2000, seed=2)
    oracle = [
        Outcome(
            arm=oracle_arm(v.device, v.source),
            expected=true_rate(v.device, v.source, oracle_arm(v.device, v.source)),
        )
        for v in visits
    ]
    summary = summarize(visits, oracle)
    assert summary["lift_captured"] == 1.0
    assert summary["regret"]["perch"] == 0.0 and summary["regret"]["uniform"] > 0


def test_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--visitors", "3000", "--exit", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for expected in ("oracle", "Perch", "uniform A/B", "Server-Timing", "holdout lift", "Dashboard: http://"):
        assert expected in out, out
    summary = json.loads((data / "summary.json").read_text())
    assert summary["visits"] == 3000 and summary["errors"] == 0
    assert set(summary["reasons"]) >= {"personalized", "holdout", "consent"}
    svg = (data / "regret.svg").read_text()
    assert svg.startswith("<svg") and "Perch" in svg


def test_the_profile_world_lets_interest_decide_the_best_arm() -> None:
    from cli.demo_report import summarize_profiles
    from cli.demo_visitors import INTERESTS

    visits = population(4000, seed=3, interests=True)
    assert {v.interest for v in visits} == set(INTERESTS)
    assert {v.interest for v in population(500, seed=3)} == {""}  # the plain demo has none
    best = {
        i: {oracle_arm(d, s, i) for d in ("desktop", "mobile") for s in ("search", "social")}
        for i in INTERESTS
    }
    assert best["running-shoes"] == {"bold"} and best["cookware"] == {"discount"}
    knows = [
        Outcome(arm=a, reason="personalized", expected=true_rate(v.device, v.source, a, v.interest))
        for v in visits
        for a in [oracle_arm(v.device, v.source, v.interest)]
    ]
    blind = [
        Outcome(arm=a, reason="personalized", expected=true_rate(v.device, v.source, a, v.interest))
        for v in visits
        for a in [oracle_arm(v.device, v.source)]
    ]
    summary = summarize_profiles(visits, blind, knows)
    assert summary["with_profiles"]["captured"] == pytest.approx(1.0)
    assert summary["without_profiles"]["captured"] < 0.7  # device and source alone cannot get there


def test_the_profile_demo_runs_signals_profiles_and_both_experiments(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    command = [sys.executable, "-m", "cli.main", "demo", "--profiles", "--visitors", "3000", "--exit"]
    result = subprocess.run(
        [*command, "--data-dir", str(data)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "device + source + profile" in result.stdout
    summary = json.loads((data / "summary-profiles.json").read_text())
    assert summary["visits"] == 3000
    assert summary["with_profiles"]["errors"] == summary["without_profiles"]["errors"] == 0
    assert len(list((data / "kv").glob("perch%3Aprofile%3A*"))) > 100  # profiles built and published
    recs = summary["recommendations"]
    assert "Recommendations block: 5 positions from 20 items" in result.stdout
    assert recs["errors"] == 0 and recs["lists"] > 2_900  # the first lists may precede any snapshot
    assert recs["lists_below_quota"] == 0 and recs["min_outside_share"] >= 0.2
    assert recs["report_floors_met"] is not None and recs["examination_fitted"][0] == 1.0
    assert recs["below_floor_in_run"] == []


def test_the_recommendations_world_values_lists_as_documented() -> None:
    from cli.demo_recs import (
        EXAMINATION,
        ITEMS,
        ListOutcome,
        attractiveness,
        expected_clicks,
        oracle_list,
        summarize_recs,
        uniform_expected,
    )

    best = oracle_list("cookware")
    assert len(best) == 5 and best == sorted(best, key=lambda i: -attractiveness(i, "cookware"))
    assert expected_clicks(best, "cookware") > uniform_expected("cookware")
    # A uniformly random list, averaged over many draws, is what uniform_expected says.
    rng = random.Random(1)
    mean = sum(expected_clicks(rng.sample(ITEMS, 5), "gifts") for _ in range(20_000)) / 20_000
    assert mean == pytest.approx(uniform_expected("gifts"), rel=0.02)
    diverse = oracle_list("running-shoes", diverse=True)
    assert any(not i.startswith("running-shoes") for i in diverse)
    assert EXAMINATION[0] == 1.0
    shown = ListOutcome(items=best, groups=["cookware"] * 5, reason="personalized", primary="cookware")
    shown.expected = expected_clicks(best, "cookware")
    summary = summarize_recs(["cookware"], [shown], None)
    assert summary["captured"] == pytest.approx(1.0)
    assert summary["lists_below_quota"] == 1  # five of one group: the quota was broken, and it says so
