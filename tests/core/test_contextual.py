"""The contextual model: encoding rules, exact score moments, Thompson draws, explanations, wire format."""

from __future__ import annotations

import math
import random
import zlib
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats

from core import (
    Arm,
    Block,
    ContextualModel,
    Segment,
    Snapshot,
    SnapshotError,
    decide,
    decode_snapshot,
    encode_snapshot,
    normal_variates,
)

BLOCKS = [
    Block("categorical", ("device",), (("desktop",), ("mobile",))),
    Block("categorical", ("source",), (("search",), ("social",))),
    Block("categorical", ("device", "source"), (("mobile", "social"),)),
    Block("numeric", ("visits",), mean=3.0, scale=2.0),
]
DIM = 1 + 4 + 4 + 3 + 1


def full_cov(rng: np.random.Generator, arms: int) -> np.ndarray:
    low = rng.normal(0, 0.3, (arms, DIM, DIM))
    return np.einsum("aij,akj->aik", low, low) + 0.01 * np.eye(DIM)


def model(
    seed: int = 0, arms: int = 3, explore: float = 1.0
) -> tuple[ContextualModel, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mean = rng.normal(0, 1, (arms, DIM))
    cov = full_cov(rng, arms)
    rows, cols = np.triu_indices(DIM)
    packed = cov[:, rows, cols].reshape(-1)
    built = ContextualModel(arms, BLOCKS, mean.reshape(-1).tolist(), packed.tolist(), explore=explore)
    # The float32 values the model holds, as float64 matrices, for reference computations.
    m32 = np.asarray(built.mean, dtype=np.float64).reshape(arms, DIM)
    c32 = np.zeros((arms, DIM, DIM))
    c32[:, rows, cols] = np.asarray(built.cov, dtype=np.float64).reshape(arms, -1)
    c32 = c32 + np.triu(c32, 1).transpose(0, 2, 1)
    return built, m32, c32


def snapshot(m: ContextualModel, floor: float = 0.0) -> Snapshot:
    n = m.arms
    return Snapshot(
        experiment="ctx",
        version=3,
        created_at=1_000_000,
        max_age_s=600.0,
        salt="ctx",
        default_arm="a0",
        holdout=0.0,
        floor=floor,
        arms=[Arm(f"a{i}") for i in range(n)],
        segments=[Segment("all")],
        alpha=[1.0] * n,
        beta=[1.0] * n,
        allocation=[1.0 / n] * n,
        context_features=("device", "source", "visits"),
        model=m,
    )


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ({"device": "mobile", "source": "social", "visits": "5"}, [0, 2, 6, 9, 12]),
        ({"device": "tablet", "source": "social"}, [0, 3, 6, 10]),  # tablet: other; the pair: other
        ({"device": "unknown", "source": "social"}, [0, 4, 6, 11]),  # missing: unknown, pair too
        ({"device": "desktop", "source": "direct", "visits": "3"}, [0, 1, 7, 10]),  # visits at the mean
    ],
)
def test_encoding_follows_the_column_rules(context: dict[str, str], expected: list[int]) -> None:
    m, _, _ = model()
    cols, vals = m.encode(context)
    assert cols == expected
    assert vals[:-1] == [1.0] * (len(cols) - 1) or cols[-1] != 12


@pytest.mark.parametrize(
    ("raw", "value"),
    [("5", 1.0), ("-97", -10.0), ("1e300", 10.0), ("nan", None), ("many", None), ("inf", None)],
)
def test_numeric_values_are_standardised_clipped_or_ignored(raw: str, value: float | None) -> None:
    m, _, _ = model()
    cols, vals = m.encode({"device": "unknown", "source": "unknown", "visits": raw})
    if value is None:
        assert 12 not in cols
    else:
        assert cols[-1] == 12 and vals[-1] == value


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["desktop", "mobile", "tablet", "unknown"]),
    st.sampled_from(["search", "social", "direct", "unknown"]),
    st.floats(-50, 50),
    st.integers(0, 2**16),
)
def test_moments_are_x_mu_and_x_sigma_x(device: str, source: str, visits: float, seed: int) -> None:
    m, mean, cov = model(seed)
    cols, vals = m.encode({"device": device, "source": source, "visits": repr(visits)})
    x = np.zeros(DIM)
    x[cols] = vals
    for a, (got_mean, got_var) in enumerate(m.moments(cols, vals)):
        assert got_mean == pytest.approx(x @ mean[a], rel=1e-9, abs=1e-9)
        assert got_var == pytest.approx(x @ cov[a] @ x, rel=1e-9, abs=1e-9)


def test_draws_are_normal_with_those_moments_scaled_by_explore() -> None:
    m, mean, cov = model(1, arms=2, explore=2.5)
    cols, vals = m.encode({"device": "mobile", "source": "search", "visits": "4"})
    x = np.zeros(DIM)
    x[cols] = vals
    rng = random.Random(7)
    draws = np.array([m.draw(cols, vals, rng.random) for _ in range(20_000)])
    for a in range(2):
        sd = np.sqrt(2.5 * x @ cov[a] @ x)
        assert stats.kstest(draws[:, a], "norm", args=(x @ mean[a], sd)).pvalue > 1e-3


def test_normal_variates_are_standard_normal_and_reproducible() -> None:
    first = normal_variates(random.Random(3).random, 5001)
    assert first == normal_variates(random.Random(3).random, 5001)
    assert len(first) == 5001
    assert stats.kstest(first, "norm").pvalue > 1e-3


def test_decide_uses_the_model_sticky_per_unit_and_explains() -> None:
    m, mean, _ = model(2, explore=0.0)  # no exploration: the arm with the best mean score wins
    snap = snapshot(m)
    ctx = {"device": "mobile", "source": "social"}
    cols, vals = m.encode({**ctx, "visits": "unknown"})
    x = np.zeros(DIM)
    x[cols] = vals
    best = int(np.argmax(mean @ x))
    first = decide(snap, "u1", ctx, now_ms=1_000_000, rng=random.Random(1))
    again = decide(snap, "u1", ctx, now_ms=1_000_000, rng=random.Random(2))
    assert (first.arm, first.propensity, first.reason) == (f"a{best}", None, "personalized")
    assert again.arm == first.arm
    # Every reason names a column whose weight for this arm beats the arms' average.
    for label in first.because:
        column = next(c for c in cols if m.label(c) == label)
        assert mean[best, column] > mean[:, column].mean()


def test_an_arm_wins_as_often_as_its_posterior_says() -> None:
    m, _, _ = model(4, arms=3)
    snap = snapshot(m, floor=0.3)
    wins = np.zeros(3)
    for i in range(6000):
        d = decide(snap, f"u{i}", {"device": "desktop"}, now_ms=1_000_000, rng=random.Random(i))
        wins[int(d.arm[1:])] += 1
    # Reference: the same procedure with numpy's normals on the exact moments.
    cols, vals = m.encode({"device": "desktop", "source": "unknown", "visits": "unknown"})
    moments = np.array(m.moments(cols, vals))
    z = np.random.default_rng(0).normal(size=(400_000, 3))
    best = np.argmax(moments[:, 0] + np.sqrt(moments[:, 1]) * z, axis=1)
    p = 0.3 / 3 + 0.7 * np.bincount(best, minlength=3) / len(best)
    assert stats.chisquare(wins, p * wins.sum()).pvalue > 1e-3


def test_schema_2_round_trips_and_schema_1_is_unchanged() -> None:
    m, _, _ = model()
    snap = snapshot(m)
    data = encode_snapshot(snap)
    assert msgpack.unpackb(data)["schema"] == 2
    back = decode_snapshot(data)
    assert back.model == snap.model and encode_snapshot(back) == data
    plain = Snapshot(**{**_fields(snap), "model": None})
    assert msgpack.unpackb(encode_snapshot(plain))["schema"] == 1


def _fields(snap: Snapshot) -> dict[str, Any]:
    return {
        name: getattr(snap, name)
        for name in Snapshot.__dataclass_fields__
        if name not in ("arm_index", "_lookup")
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: {**f, "model": model(arms=2)[0]}, "model has 2 arms, the snapshot 3"),
        (lambda f: {**f, "context_features": ("device",)}, r"model reads \['source', 'visits'\]"),
    ],
)
def test_a_model_that_does_not_fit_its_snapshot_is_refused(change: Any, message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        Snapshot(**change(_fields(snapshot(model()[0]))))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("weird", ("device",)), "block kind 'weird'"),
        (("categorical", ()), "1-4 feature names"),
        (("numeric", ("a", "b")), "reads exactly one feature"),
        (("categorical", ("device",), (("a",), ("a",))), "values must be unique"),
        (("categorical", ("device",), (("a", "b"),)), "must be 1 strings"),
        (("numeric", ("visits",), (), 0.0, 0.0), "scale=0.0, must be > 0"),
        (("numeric", ("visits",), (), float("nan")), "mean=nan"),
    ],
)
def test_bad_blocks_name_the_rule(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        Block(*args)


def test_model_sizes_are_checked_before_tables() -> None:
    wide = Block("categorical", ("device",), tuple((str(i),) for i in range(3998)))
    with pytest.raises(SnapshotError, match="at most 4000"):
        ContextualModel(1, [wide, wide], [], [])
    with pytest.raises(SnapshotError, match="cov of arm 0: variance of column 0 must be >= 0"):
        ContextualModel(1, [], [0.0], [-1.0])


VALID = encode_snapshot(snapshot(model()[0]))
BODY = msgpack.unpackb(msgpack.unpackb(VALID)["payload"])
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=32),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(BODY["model"])), values, min_size=1, max_size=3))
def test_a_mangled_model_is_a_snapshot_error(replaced: dict[str, Any]) -> None:
    payload = msgpack.packb({**BODY, "model": {**BODY["model"], **replaced}}, use_bin_type=True)
    data = msgpack.packb({"schema": 2, "crc32": zlib.crc32(payload), "payload": payload})
    try:
        decode_snapshot(data)
    except SnapshotError as exc:
        assert str(exc)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(["kind", "inputs", "values", "mean", "scale"]), values), max_size=3
    )
)
@example([{"kind": "categorical", "inputs": ["device"], "values": 5}])
@example([{"kind": "numeric", "inputs": ["visits"], "mean": "x"}])
def test_mangled_blocks_are_a_snapshot_error(blocks: list[dict[str, Any]]) -> None:
    payload = msgpack.packb({**BODY, "model": {**BODY["model"], "blocks": blocks}}, use_bin_type=True)
    data = msgpack.packb({"schema": 2, "crc32": zlib.crc32(payload), "payload": payload})
    try:
        decode_snapshot(data)
    except SnapshotError as exc:
        assert str(exc)


@pytest.mark.parametrize(
    ("values", "finite"),
    [
        ([], True),
        ([0.0, -1.5, 3e38, -3e38, 1e-45], True),  # huge and subnormal values are finite
        ([1.0, float("nan")], False),
        ([float("-nan"), 2.0], False),
        ([float("inf")], False),
        ([0.5, float("-inf")], False),
    ],
)
def test_the_finiteness_check_reads_the_exponent_bits(values: list[float], finite: bool) -> None:
    from array import array

    from core.contextual import _all_finite

    assert _all_finite(array("f", values)) is finite
    assert finite == all(math.isfinite(v) for v in values)
