"""Per-arm Laplace posteriors: the sparse design, evidence-chosen prior scales, the drift update."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from control_plane.learning.contextual_learner import _table, build_blocks, encode_paths
from control_plane.learning.laplace import Design, fit_arms, follow
from control_plane.storage.stats import CellStats
from tests.control_plane.learning.test_contextual_learner import ARMS, DEVICES, SOURCES, cells, spec


def test_the_sparse_design_multiplies_as_the_dense_matrix() -> None:
    rng = np.random.default_rng(3)
    dense = np.zeros((40, 12))
    for row in dense:
        row[0] = 1.0
        row[rng.choice(np.arange(1, 12), 3, replace=False)] = rng.normal(size=3)
    design = Design.of(dense)
    w, v, c = rng.normal(size=12), rng.normal(size=40), rng.uniform(0, 2, 40)
    assert design.dot(w) == pytest.approx(dense @ w)
    assert design.tdot(v) == pytest.approx(dense.T @ v)
    assert design.gram(c) == pytest.approx(dense.T @ np.diag(c) @ dense)
    rows = design.rows(np.arange(40) % 3 == 0)
    assert rows.gram(c[::3]) == pytest.approx(dense[::3].T @ np.diag(c[::3]) @ dense[::3])
    assert Design.of(np.zeros((0, 12))).gram(np.zeros(0)).shape == (12, 12)


def test_evidence_picks_a_tight_prior_for_context_free_data_and_a_loose_one_otherwise() -> None:
    flat = {path: {a: CellStats(3000.0, 90.0) for a in ARMS} for path in itertools.product(DEVICES, SOURCES)}
    s = spec()
    blocks = build_blocks(s, flat)
    paths = sorted(flat)
    x = encode_paths(blocks, s.features, paths)
    n, r = _table(flat, paths, ARMS)
    tight = fit_arms(x, n, r, binary=True, prior_scale=None)
    _, r2 = _table(cells(3000.0), paths, ARMS)
    loose = fit_arms(x, n, r2, binary=True, prior_scale=None)
    assert tight.prior_scale < loose.prior_scale


def test_follow_keeps_what_still_holds_and_follows_what_changed() -> None:
    s = spec(arms=[{"key": "a"}, {"key": "b"}], default_arm="a")
    paths = [("mobile", "search"), ("desktop", "search")]
    old = {p: {"a": CellStats(20_000.0, 1000.0), "b": CellStats(20_000.0, 1000.0)} for p in paths}
    new = {p: {"a": CellStats(2_000.0, 100.0), "b": CellStats(2_000.0, 100.0)} for p in paths}
    new[("mobile", "search")]["b"] = CellStats(2_000.0, 300.0)  # b now converts 15 % of mobiles
    blocks = build_blocks(s, old)
    x = encode_paths(blocks, s.features, paths)
    n_old, r_old = _table(old, paths, ["a", "b"])
    n_new, r_new = _table(new, paths, ["a", "b"])
    before = fit_arms(x, n_old, r_old, binary=True, prior_scale=None)
    after, taus = follow(before, x, n_new, r_new, binary=True)
    assert taus[0] <= 0.05
    assert taus[1] >= 0.2
    rate = 1 / (1 + np.exp(-(x @ after.mean.T)))  # paths x arms
    assert rate[0, 1] == pytest.approx(0.15, abs=0.02)  # mobile, b: followed
    assert rate[1, 1] == pytest.approx(0.05, abs=0.01)  # desktop, b: kept
    assert rate[:, 0] == pytest.approx([0.05, 0.05], abs=0.005)  # a: all it learnt still holds
    # Everything in one fit would still believe b's old mobile rate, diluted.
    pooled = fit_arms(x, n_old + n_new, r_old + r_new, binary=True, prior_scale=None)
    assert 1 / (1 + np.exp(-(x[0] @ pooled.mean[1]))) < 0.075


def test_evidence_gives_interactions_their_own_scale() -> None:
    """An additive world: main effects matter, pairs do not; the pairs' scale ends up smaller."""
    data = cells(4000.0)
    s = spec()
    blocks = build_blocks(s, data)
    paths = sorted(data)
    x = encode_paths(blocks, s.features, paths)
    n, r = _table(data, paths, ARMS)
    pair = [False] + [len(b.inputs) > 1 for b in blocks for _ in range(b.width)]
    fit = fit_arms(x, n, r, binary=True, prior_scale=None, interactions=pair)
    columns = np.flatnonzero(pair)
    main = np.flatnonzero(~np.array(pair))[1:]
    assert np.abs(fit.mean[:, columns]).max() < np.abs(fit.mean[:, main]).max() / 2
