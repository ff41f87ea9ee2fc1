from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from control_plane.learning.slates import (
    fit_position_model,
    independent_ips,
    self_normalized_independent_ips,
    self_normalized_standard_ips,
    standard_ips,
)

OBP = json.loads((Path(__file__).parent / "obp_slates.json").read_text())


def test_the_estimators_match_open_bandit_pipelines_to_1e_9() -> None:
    logs, expected = OBP["logs"], OBP["results"]
    assert OBP["obp"] == "0.5.7"
    slate, reward, position = logs["slate"], logs["reward"], logs["position"]
    ours = {
        "SlateStandardIPS": standard_ips(slate, reward, logs["logged_list"], logs["target_list"]),
        "SelfNormalizedSlateStandardIPS": self_normalized_standard_ips(
            slate, reward, logs["logged_list"], logs["target_list"]
        ),
        "SlateIndependentIPS": independent_ips(slate, reward, logs["logged_item"], logs["target_item"]),
        "SelfNormalizedSlateIndependentIPS": self_normalized_independent_ips(
            slate, reward, logs["logged_item"], logs["target_item"], position
        ),
    }
    assert set(ours) == set(expected)
    for name, value in ours.items():
        assert value == pytest.approx(expected[name], abs=1e-9, rel=0), name


def test_the_logging_policy_valued_by_itself_is_its_mean_reward_per_list() -> None:
    rng = np.random.default_rng(3)
    slate = np.repeat(np.arange(200), 4)
    reward = (rng.random(800) < 0.2).astype(float)
    p = rng.uniform(0.05, 0.9, 800)
    assert independent_ips(slate, reward, p, p) == pytest.approx(reward.sum() / 200)
    assert self_normalized_independent_ips(slate, reward, p, p, np.tile(np.arange(4), 200)) == pytest.approx(
        reward.sum() / 200
    )


@pytest.mark.parametrize(
    ("logged", "rule"),
    [([0.5, 0.0], "logged propensities must be finite and > 0"), ([0.5], "1-d arrays of one length")],
)
def test_the_estimators_refuse_unusable_logs(logged: list[float], rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        independent_ips([1, 1], [0.0, 1.0], logged, [0.5, 0.5])


def test_the_position_model_recovers_examination_and_attractiveness() -> None:
    rng = np.random.default_rng(7)
    theta = np.array([1.0, 0.7, 0.5, 0.35, 0.25])
    gamma = rng.uniform(0.05, 0.4, 12)
    table = {}
    for i in range(12):
        for p in range(5):
            shown = 4_000
            table[f"item-{i}", "[]", p] = (shown, int(rng.binomial(shown, theta[p] * gamma[i])))
    model = fit_position_model(table, 5)
    assert model is not None
    np.testing.assert_allclose(model.examination, theta, rtol=0.08)
    fitted = np.array([model.attractiveness[f"item-{i}"] for i in range(12)])
    np.testing.assert_allclose(fitted, gamma, rtol=0.12)
    assert model.shown == 12 * 5 * 4_000


def test_the_position_model_shrugs_off_impossible_rows() -> None:
    table = {("a", "c", 0): (10, 50), ("a", "c", 9): (5, 5), ("b", "c", -1): (3, 1), ("b", "c", 1): (10, 1)}
    model = fit_position_model(table, 2)
    assert model is not None and model.clicks == 11 and model.shown == 20
    assert fit_position_model({("a", "c", 0): (10, 0)}, 2) is None


def test_cells_keep_a_personalizing_rankers_choices_from_biasing_the_examination() -> None:
    # Each cell's favourite item sits on top: pooled over cells, position 2 would look unexamined.
    rng = np.random.default_rng(11)
    theta = (1.0, 0.5)
    table = {}
    for cell, (top, low) in {'["a"]': ("x", "y"), '["b"]': ("y", "x")}.items():
        for item, p, gamma in ((top, 0, 0.4), (low, 1, 0.05), (top, 1, 0.4), (low, 0, 0.05)):
            shown = 20_000 if (item == top) == (p == 0) else 2_000
            table[item, cell, p] = (shown, int(rng.binomial(shown, theta[p] * gamma)))
    model = fit_position_model(table, 2)
    assert model is not None
    assert model.examination[1] == pytest.approx(0.5, abs=0.05)
