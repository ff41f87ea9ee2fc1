from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from control_plane.learning.evaluation import (
    LoggedExposure,
    OPEResult,
    doubly_robust,
    effective_sample_size,
    evaluate,
    ips,
    logged_exposures,
    policy_eval,
    snips,
    snips_difference,
)
from control_plane.storage.store import Store
from core import Arm, Segment, Snapshot
from tests.control_plane.event_stores import put
from tests.factories import NOW, exposure, outcome, spec

# Five logged decisions, written out so every estimate can be checked by hand.
R = [1.0, 0.0, 1.0, 0.0, 1.0]
P = [0.5, 0.25, 0.5, 0.8, 0.2]
Q = [1.0, 0.5, 0.0, 0.4, 0.6]
# w = q / p = [2, 2, 0, 0.5, 3]; w r = [2, 0, 0, 0, 3]
DM_LOGGED = [0.6, 0.2, 0.5, 0.3, 0.4]
DM_TARGET = [0.7, 0.3, 0.2, 0.35, 0.5]


def test_ips_is_the_mean_weighted_reward() -> None:
    # (2 + 0 + 0 + 0 + 3) / 5
    assert ips(R, P, Q) == pytest.approx(1.0)


def test_the_paired_snips_difference_and_its_standard_error() -> None:
    new, old = [0.9, 0.5, 0.1, 0.4, 0.6], Q
    difference, se = snips_difference(R, P, new, old)  # type: ignore[misc]
    assert difference == pytest.approx(snips(R, P, new) - snips(R, P, old))
    assert se is not None and se > 0
    assert snips_difference(R, P, [0.0] * 5, old) is None  # SNIPS undefined for one of them
    # The error is what the difference actually scatters by over repeated logs, and smaller than
    # the two estimates' errors added: the shared rows cancel most of the noise.
    rng = np.random.default_rng(7)
    differences, errors, unpaired = [], [], []
    for _ in range(400):
        arm = rng.integers(0, 3, 2000)
        p = np.full(2000, 1 / 3)
        r = (rng.random(2000) < np.array([0.04, 0.05, 0.06])[arm]).astype(float)
        q_new = np.array([0.1, 0.3, 0.6])[arm]
        q_old = np.array([0.2, 0.3, 0.5])[arm]
        d, e = snips_difference(r, p, q_new, q_old)  # type: ignore[misc]
        differences.append(d)
        errors.append(e)
        unpaired.append(float(np.hypot(evaluate(r, p, q_new).ips_se, evaluate(r, p, q_old).ips_se)))
    assert np.mean(errors) == pytest.approx(np.std(differences), rel=0.15)
    assert np.mean(errors) < 0.5 * np.mean(unpaired)


def test_snips_normalises_by_the_weight_sum() -> None:
    # sum(w r) / sum(w) = 5 / (2 + 2 + 0 + 0.5 + 3) = 5 / 7.5
    assert snips(R, P, Q) == pytest.approx(2.0 / 3.0)


def test_doubly_robust_corrects_the_model_with_weighted_residuals() -> None:
    # r - dm_logged   = [0.4, -0.2, 0.5, -0.3, 0.6]
    # w * residual    = [0.8, -0.4, 0.0, -0.15, 1.8]
    # + dm_target     = [1.5, -0.1, 0.2, 0.2, 2.3]   sum 4.1
    assert doubly_robust(R, P, Q, DM_LOGGED, DM_TARGET) == pytest.approx(0.82)


def test_effective_sample_size() -> None:
    # (sum w)^2 / sum w^2 = 7.5^2 / (4 + 4 + 0 + 0.25 + 9) = 56.25 / 17.25
    assert effective_sample_size([2.0, 2.0, 0.0, 0.5, 3.0]) == pytest.approx(56.25 / 17.25)
    assert effective_sample_size([0.3] * 8) == pytest.approx(8.0)  # equal weights: every row counts
    assert effective_sample_size([5.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert effective_sample_size([]) == 0.0
    assert effective_sample_size([0.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        effective_sample_size([1.0, -1.0])


def test_evaluate_gives_every_estimate_and_standard_errors() -> None:
    got = evaluate(R, P, Q, DM_LOGGED, DM_TARGET)
    assert got.n == 5
    assert got.ips == pytest.approx(1.0)
    assert got.snips == pytest.approx(2 / 3)
    assert got.dr == pytest.approx(0.82)
    assert got.ess == pytest.approx(56.25 / 17.25)
    # w r = [2, 0, 0, 0, 3], mean 1: squared deviations 1 + 1 + 1 + 1 + 4 = 8, sample variance 8 / 4 = 2
    assert got.ips_se == pytest.approx((2.0 / 5) ** 0.5)
    # DR terms [1.5, -0.1, 0.2, 0.2, 2.3], mean 0.82: squared deviations
    # 0.4624 + 0.8464 + 0.3844 + 0.3844 + 2.1904 = 4.268, sample variance 1.067
    assert got.dr_se == pytest.approx((1.067 / 5) ** 0.5)
    assert got.to_dict() == {
        "ips": got.ips,
        "snips": got.snips,
        "dr": got.dr,
        "ess": got.ess,
        "n": 5,
        "ips_se": got.ips_se,
        "dr_se": got.dr_se,
    }


def test_evaluate_without_a_model_has_no_dr() -> None:
    got = evaluate(R, P, Q)
    assert got.dr is None and got.dr_se is None and got.ips == pytest.approx(1.0)
    with pytest.raises(ValueError, match="both dm_logged and dm_target"):
        evaluate(R, P, Q, dm_logged=DM_LOGGED)


def test_the_logging_policy_evaluates_to_its_own_mean_reward() -> None:
    # q = p: every weight is 1.
    got = evaluate(R, P, P)
    assert got.ips == got.snips == pytest.approx(0.6)
    assert got.ess == pytest.approx(5.0)


def test_no_rows_is_an_error_not_a_number() -> None:
    for estimate in (ips, snips):
        with pytest.raises(ValueError, match="no logged rows"):
            estimate([], [], [])
    with pytest.raises(ValueError, match="no logged rows"):
        doubly_robust([], [], [], [], [])
    with pytest.raises(ValueError, match="no logged rows"):
        evaluate([], [], [])


def test_a_candidate_that_never_picks_a_logged_arm() -> None:
    zeros = [0.0] * 5
    with pytest.raises(ValueError, match="SNIPS is undefined"):
        snips(R, P, zeros)
    got = evaluate(R, P, zeros, DM_LOGGED, DM_TARGET)
    # IPS and DR stay defined: 0, and the model's own value mean(dm_target) = 2.05 / 5.
    assert (got.ips, got.snips, got.ess) == (0.0, None, 0.0)
    assert got.dr == pytest.approx(0.41)


def test_one_row_has_no_standard_error() -> None:
    got = evaluate([1.0], [0.5], [1.0])
    assert (got.ips, got.snips, got.ess, got.ips_se) == (2.0, 1.0, 1.0, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([1.0], [0.0], [1.0]), r"propensities must be in \(0, 1\]"),
        (([1.0], [1.5], [1.0]), r"propensities must be in \(0, 1\]"),
        (([1.0], [0.5], [1.2]), r"target probabilities must be in \[0, 1\]"),
        (([1.0], [0.5], [-0.1]), r"target probabilities must be in \[0, 1\]"),
        (([1.0, 0.0], [0.5], [1.0]), "lengths differ"),
        (([float("nan")], [0.5], [1.0]), "rewards must be finite"),
        (([[1.0]], [[0.5]], [[1.0]]), "one-dimensional"),
    ],
)
def test_bad_inputs_are_rejected(args: tuple[Any, Any, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(*args)


def test_dr_model_arrays_must_match_the_rows() -> None:
    with pytest.raises(ValueError, match="dm_logged"):
        doubly_robust(R, P, Q, DM_LOGGED[:4], DM_TARGET)


# --- simulation: a known logging policy, a known target, a known true value ------------------

MU = np.array([[0.1, 0.3, 0.5], [0.6, 0.2, 0.1], [0.3, 0.3, 0.7]])  # reward rate per (context, arm)
TARGET = np.array([2, 0, 1])  # deterministic candidate: arm per context
TRUE_VALUE = float(np.mean(MU[np.arange(3), TARGET]))  # contexts are uniform: (0.5 + 0.6 + 0.3) / 3
MODEL = 0.8 * MU + 0.1  # a reward model that is wrong everywhere, but informative


def simulate(seed: int, n: int) -> OPEResult:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, n)
    a = rng.integers(0, 3, n)  # uniform logging policy
    r = (rng.random(n) < MU[x, a]).astype(np.float64)
    p = np.full(n, 1.0 / 3.0)
    q = (a == TARGET[x]).astype(np.float64)
    return evaluate(r, p, q, MODEL[x, a], MODEL[x, TARGET[x]])


def test_estimates_recover_the_true_value_of_a_deterministic_policy() -> None:
    assert abs(TRUE_VALUE - 1.4 / 3) < 1e-12
    got = simulate(seed=7, n=20_000)
    assert got.ips_se is not None and got.ips_se < 0.01
    assert got.ips == pytest.approx(TRUE_VALUE, abs=0.025)
    assert got.snips == pytest.approx(TRUE_VALUE, abs=0.025)
    assert got.dr == pytest.approx(TRUE_VALUE, abs=0.025)
    # A third of the rows agree with the deterministic target, each with weight 3.
    assert got.ess == pytest.approx(20_000 / 3, rel=0.03)


def test_doubly_robust_varies_less_than_ips_across_seeds() -> None:
    runs = [simulate(seed, n=2_000) for seed in range(100)]
    ips_values = np.array([run.ips for run in runs])
    dr_values = np.array([run.dr for run in runs], dtype=np.float64)
    # Bernoulli noise bounds the gain: per row, IPS varies by about 3V - V^2 = 1.18 and DR with
    # this model by about 0.72, so the ratio is near 0.6.
    assert float(np.var(dr_values)) < 0.8 * float(np.var(ips_values))
    # Both are unbiased: their averages over 100 runs sit near the true value (se about 0.0024).
    assert float(np.mean(ips_values)) == pytest.approx(TRUE_VALUE, abs=0.01)
    assert float(np.mean(dr_values)) == pytest.approx(TRUE_VALUE, abs=0.01)


# --- policy_eval: a candidate snapshot against logged rows --------------------------------------


def candidate(allocation: tuple[float, ...] = (0.5, 0.5, 0.75, 0.25)) -> Snapshot:
    # Global segment and device:mobile; arms a, b.  Cells are (a, b) per segment:
    #   allocation  global (0.5, 0.5)    mobile (0.75, 0.25)
    #   posterior   global a Beta(1, 1) = 0.5, b Beta(1, 3) = 0.25
    #               mobile a Beta(3, 1) = 0.75, b Beta(1, 1) = 0.5
    return Snapshot(
        experiment="hero",
        version=3,
        created_at=NOW,
        max_age_s=3600.0,
        salt="hero",
        default_arm="a",
        holdout=0.0,
        floor=0.0,
        arms=[Arm("a"), Arm("b")],
        segments=[Segment("all"), Segment("device:mobile", {"device": "mobile"}, 0)],
        alpha=[1.0, 1.0, 3.0, 1.0],
        beta=[1.0, 3.0, 1.0, 1.0],
        allocation=list(allocation),
        context_features=["device", "source"],
    )


ROWS = [
    LoggedExposure("a", ("mobile", "search"), 0.5, 1.0),
    LoggedExposure("b", ("desktop", "direct"), 0.5, 0.0),
    LoggedExposure("b", ("mobile", "direct"), 0.5, 1.0),
    LoggedExposure("z", ("desktop", "search"), 0.5, 1.0),  # an arm the candidate does not have
]


def check_policy_values(got: OPEResult) -> None:
    # row  segment  q     w    r  dm_logged  dm_target
    # 1    mobile   0.75  1.5  1  0.75       0.75*0.75 + 0.25*0.5 = 0.6875
    # 2    global   0.5   1    0  0.25       0.5*0.5 + 0.5*0.25  = 0.375
    # 3    mobile   0.25  0.5  1  0.5        0.6875
    # 4    global   0     0    1  (unused)   0.375
    assert got.n == 4
    assert got.ips == pytest.approx((1.5 + 0.5) / 4)  # 0.5
    assert got.snips == pytest.approx(2.0 / 3.0)  # 2 / (1.5 + 1 + 0.5 + 0)
    assert got.ess == pytest.approx(9.0 / 3.5)  # 3^2 / (2.25 + 1 + 0.25)
    # DR terms: 0.6875 + 1.5*0.25, 0.375 - 0.25, 0.6875 + 0.5*0.5, 0.375 -> 1.0625, 0.125, 0.9375, 0.375
    assert got.dr == pytest.approx(2.5 / 4)


def test_policy_eval_by_hand() -> None:
    check_policy_values(policy_eval(ROWS, candidate(), spec()))


def test_policy_eval_dr_matches_the_reference_formula_when_rows_do_not_sum_to_one() -> None:
    # Rows that sum to 1 only within the snapshot's tolerance, as float32 rounding leaves them.
    snap = candidate(allocation=(0.7004, 0.2999, 0.7502, 0.2501))
    table = np.asarray(snap.allocation, dtype=np.float64).reshape(2, 2)  # float32 as stored
    means = np.array([[0.5, 0.25], [0.75, 0.5]])
    # Open Bandit Pipeline's DoublyRobust: q_hat averaged under pi_e, plus w * (r - q_hat(logged)).
    segment = {"mobile": 1, "desktop": 0}
    terms = []
    for arm, path, propensity, reward in ROWS:
        s = segment[path[0]]
        a = {"a": 0, "b": 1}.get(arm)
        dm = np.average(means[s], weights=table[s])
        w = 0.0 if a is None else table[s, a] / propensity
        terms.append(dm + (0.0 if a is None else w * (reward - means[s, a])))
    got = policy_eval(ROWS, snap, spec())
    assert got.dr == pytest.approx(float(np.mean(terms)), rel=1e-12, abs=0.0)


def test_policy_eval_without_rows_is_an_error() -> None:
    with pytest.raises(ValueError, match="no logged rows"):
        policy_eval([], candidate(), spec())


def logged(i: int, *, ts: int, context: dict[str, str], arm: str, **fields: Any) -> dict[str, Any]:
    return {**exposure(i, arm=arm, ts=ts, context=context), **fields}


def test_logged_exposures_reads_personalized_rows_newest_first(any_store: Store) -> None:
    store = any_store
    store.create_experiment(spec(), NOW)
    put(
        store,
        [
            logged(1, ts=NOW - 4000, context={"device": "mobile", "source": "search"}, arm="a"),
            logged(2, ts=NOW - 3000, context={"device": "desktop", "source": "direct"}, arm="b"),
            logged(3, ts=NOW - 2000, context={"device": "mobile", "source": "direct"}, arm="b"),
            logged(4, ts=NOW - 1000, context={"device": "desktop", "source": "search"}, arm="z"),
            # Left out: holdout, no propensity, too old, another experiment.
            logged(5, ts=NOW, context={}, arm="a", reason="holdout"),
            logged(6, ts=NOW, context={}, arm="a", propensity=None),
            logged(7, ts=NOW - 10_000, context={}, arm="a"),
            logged(8, ts=NOW, context={}, arm="a", experiment="other"),
            outcome(1, ts=NOW),
            outcome(3, ts=NOW),
            outcome(4, ts=NOW),
            outcome(5, ts=NOW),
        ],
        NOW,
    )
    rows = logged_exposures(store, "hero", since_ms=NOW - 5000)
    assert rows == list(reversed(ROWS))
    assert all(isinstance(row, LoggedExposure) for row in rows)
    check_policy_values(policy_eval(rows, candidate(), spec()))
    assert logged_exposures(store, "hero", since_ms=NOW - 5000, limit=2) == [ROWS[3], ROWS[2]]
    assert logged_exposures(store, "hero", since_ms=NOW - 5000, until_ms=NOW - 2000) == [ROWS[1], ROWS[0]]
    assert logged_exposures(store, "nobody", since_ms=0) == []
