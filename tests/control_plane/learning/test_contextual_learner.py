"""The contextual learner: vocabularies, the Laplace fit, the prior chosen by evidence, the snapshot."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from control_plane.experiments import ExperimentError, ExperimentSpec
from control_plane.learning.contextual_learner import build_blocks, encode_paths, learn_contextual
from control_plane.learning.learner import learn
from control_plane.storage.stats import CellStats
from core import decode_snapshot, encode_snapshot

ARMS = ["a", "b", "c"]
DEVICES = ["desktop", "mobile", "tablet"]
SOURCES = ["search", "social", "direct"]


def spec(**over: object) -> ExperimentSpec:
    doc: dict[str, object] = {
        "key": "hero",
        "arms": [{"key": a} for a in ARMS],
        "default_arm": "a",
        "features": ["device", "source"],
        "min_segment_units": 1,
    }
    doc.update(over)
    return ExperimentSpec.create(doc)


def true_logit(device: str, source: str, arm: str) -> float:
    # Additive in the logit: the best arm depends on the device, sources shift everyone.
    device_effect = {"desktop": {"a": 0.4, "b": 0.0, "c": -0.2}, "mobile": {"a": -0.3, "b": 0.5, "c": 0.0}}
    source_effect = {"search": 0.2, "social": -0.4, "direct": 0.0}
    return -3.0 + device_effect.get(device, {"a": 0.0, "b": -0.2, "c": 0.5})[arm] + source_effect[source]


def cells(n: float, seed: int = 0) -> dict[tuple[str, ...], dict[str, CellStats]]:
    rng = np.random.default_rng(seed)
    out: dict[tuple[str, ...], dict[str, CellStats]] = {}
    for d, s in itertools.product(DEVICES, SOURCES):
        out[d, s] = {}
        for a in ARMS:
            p = 1 / (1 + math.exp(-true_logit(d, s, a)))
            out[d, s][a] = CellStats(n, float(rng.binomial(int(n), p)))
    return out


def test_new_experiments_with_features_are_contextual_and_forget() -> None:
    s = spec()
    assert (s.model, s.half_life_s) == ("contextual", 7 * 86400.0)
    assert ExperimentSpec.create({**s.to_dict(), "model": "segments"}).model == "segments"
    # A stored experiment from before the field stays what it was.
    stored = {k: v for k, v in s.to_dict().items() if k not in ("model", "contextual")}
    assert ExperimentSpec.from_dict(stored).model == "segments"
    assert ExperimentSpec.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"model": "deep"}, "model='deep', must be one of"),
        ({"contextual": {"numeric": ["age"]}}, r"contextual names \['age'\], which are not in features"),
        ({"contextual": {"interactions": [["device"]]}}, "must be 2-4 distinct feature names"),
        ({"contextual": {"explore": -1}}, r"contextual.explore=-1, must be in \[0.0, 100.0\]"),
        ({"contextual": {"max_values": 0}}, "contextual.max_values=0"),
        ({"contextual": {"surprise": 1}}, "invalid field"),
        ({"model": "segments", "features": list("abcde")}, "at most 4 for model 'segments'"),
    ],
)
def test_bad_contextual_settings_name_the_rule(over: dict[str, object], message: str) -> None:
    with pytest.raises(ExperimentError, match=message):
        spec(**over)


def test_the_fit_recovers_each_contexts_best_arm() -> None:
    snap = learn_contextual(spec(), cells(4000.0), version=1, now_ms=0)
    model = snap.model
    assert model is not None
    for d, s in itertools.product(DEVICES, SOURCES):
        means = [m for m, _ in model.moments(*model.encode({"device": d, "source": s}))]
        truth = [true_logit(d, s, a) for a in ARMS]
        assert int(np.argmax(means)) == int(np.argmax(truth))
        assert means == pytest.approx(truth, abs=0.15)


def test_vocabularies_keep_the_busiest_values_with_enough_visitors() -> None:
    data = {
        ("mobile", "search"): {"a": CellStats(500.0, 5.0)},
        ("desktop", "search"): {"a": CellStats(300.0, 5.0)},
        ("tv", "search"): {"a": CellStats(200.0, 5.0)},
        ("unknown", "social"): {"a": CellStats(900.0, 5.0)},
    }
    blocks = build_blocks(spec(contextual={"max_values": 2, "interactions": []}), data)
    assert [b.values for b in blocks] == [(("mobile",), ("desktop",)), (("search",), ("social",))]
    # One client inventing a device: too few distinct visitors for a column of its own.
    units = {
        ("mobile", "search"): 40,
        ("desktop", "search"): 1,
        ("tv", "search"): 50,
        ("unknown", "social"): 9,
    }
    blocks = build_blocks(spec(min_segment_units=5, contextual={"interactions": []}), data, units)
    assert blocks[0].values == (("mobile",), ("tv",))


def test_interactions_and_numeric_features_get_their_blocks() -> None:
    s = spec(
        features=["device", "source", "visits"],
        contextual={"interactions": [["device", "source"]], "numeric": ["visits"]},
    )
    data = {
        ("mobile", "social", "1"): {"a": CellStats(100.0, 2.0)},
        ("mobile", "search", "3"): {"a": CellStats(300.0, 2.0)},
        ("desktop", "search", "x"): {"a": CellStats(50.0, 1.0)},
    }
    blocks = build_blocks(s, data)
    assert [(b.kind, b.inputs) for b in blocks] == [
        ("categorical", ("device",)),
        ("categorical", ("source",)),
        ("categorical", ("device", "source")),
        ("numeric", ("visits",)),
    ]
    numeric = blocks[-1]
    assert numeric.mean == pytest.approx(2.5) and numeric.scale == pytest.approx(math.sqrt(0.75))
    x = encode_paths(blocks, s.features, sorted(data))
    snap = learn_contextual(s, data, version=2, now_ms=0)
    assert snap.model is not None and x.shape == (3, snap.model.dim)
    for row, path in zip(x, sorted(data), strict=True):  # the learner encodes as the edge does
        cols, vals = snap.model.encode(dict(zip(s.features, path, strict=True)))
        assert np.flatnonzero(row).tolist() == cols and row[cols].tolist() == vals


def test_numeric_rewards_use_the_conjugate_gaussian_model() -> None:
    s = spec(reward={"kind": "numeric", "max_value": 10.0})
    data = {("mobile", "search"): {"a": CellStats(1000.0, 300.0), "b": CellStats(1000.0, 600.0)}}
    snap = learn_contextual(s, data, version=1, now_ms=0)
    assert snap.model is not None
    means = [m for m, _ in snap.model.moments(*snap.model.encode({"device": "mobile", "source": "search"}))]
    assert means[0] == pytest.approx(0.3, abs=0.02) and means[1] == pytest.approx(0.6, abs=0.02)


def test_no_data_gives_the_prior_and_a_uniform_allocation() -> None:
    snap = learn(spec(), {}, version=1, now_ms=5)
    assert snap.model is not None and list(snap.allocation) == pytest.approx([1 / 3] * 3)
    # Intercept, then other and unknown per feature and for the (device, source) pair.
    assert snap.model.dim == 1 + 2 + 2 + 2


def test_the_same_inputs_give_the_same_bytes_and_a_schema_2_snapshot() -> None:
    first = encode_snapshot(learn(spec(), cells(500.0), version=4, now_ms=9))
    again = encode_snapshot(learn(spec(), dict(reversed(list(cells(500.0).items()))), version=4, now_ms=9))
    assert first == again
    snap = decode_snapshot(first)
    assert snap.model is not None and [s.key for s in snap.segments] == ["all"]
    assert abs(sum(snap.allocation) - 1.0) < 1e-3


def test_learning_with_recent_cells_equals_the_update() -> None:
    data = cells(3000.0)
    recent = {
        p: {a: CellStats(c.exposures / 10, c.reward / 10) for a, c in arms.items()}
        for p, arms in data.items()
    }
    snap = learn_contextual(spec(), data, version=1, now_ms=0, recent=recent)
    plain = learn_contextual(spec(), data, version=1, now_ms=0)
    assert snap.model is not None and plain.model is not None
    # Nothing changed: the update agrees with the single fit on everything.
    assert np.allclose(snap.model.mean, plain.model.mean, atol=0.05)


def test_hostile_numbers_never_stop_a_numeric_feature_from_learning() -> None:
    s = spec(features=["device", "visits"], contextual={"numeric": ["visits"]})
    data = {
        ("mobile", "1e308"): {"a": CellStats(10.0, 1.0)},
        ("mobile", "-1e300"): {"a": CellStats(10.0, 1.0)},
        ("mobile", "nan"): {"a": CellStats(10.0, 1.0)},
        ("mobile", "3"): {"a": CellStats(100.0, 5.0)},
        ("mobile", "5"): {"a": CellStats(100.0, 5.0)},
    }
    snap = learn_contextual(s, data, version=1, now_ms=0)
    assert snap.model is not None
    numeric = snap.model.blocks[-1]
    assert (numeric.mean, numeric.scale) == (4.0, 1.0)


def test_pairs_of_categorical_features_interact_by_default_up_to_four() -> None:
    assert spec().interaction_groups() == (("device", "source"),)
    three = spec(features=["device", "source", "country"])
    assert three.interaction_groups() == (("device", "source"), ("device", "country"), ("source", "country"))
    assert spec(features=list("abcde")).interaction_groups() == ()  # would multiply the columns
    assert spec(contextual={"interactions": []}).interaction_groups() == ()
    numeric = spec(features=["device", "visits"], contextual={"numeric": ["visits"]})
    assert numeric.interaction_groups() == ()
    assert ExperimentSpec.from_dict(three.to_dict()) == three


def test_a_model_too_big_for_a_snapshot_drops_interactions_then_halves_vocabularies() -> None:
    arms = [{"key": f"a{i}"} for i in range(50)]
    s = spec(arms=arms, default_arm="a0", features=["f0", "f1", "f2", "f3"], contextual={"max_values": 48})
    data = {
        (f"v{i}", f"v{(i * 7) % 48}", f"v{(i * 11) % 48}", f"v{(i * 13) % 48}"): {"a0": CellStats(10.0, 1.0)}
        for i in range(48 * 48)
    }
    blocks = build_blocks(s, data)
    dim = 1 + sum(b.width for b in blocks)
    assert 50 * (dim + dim * (dim + 1) // 2) <= 6_000_000
    assert all(len(b.inputs) == 1 for b in blocks[:4])  # the main effects are all still there
    snap = learn_contextual(s, data, version=1, now_ms=0)  # and it publishes
    assert snap.model is not None and snap.model.dim == dim
