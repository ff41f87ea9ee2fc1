"""From decayed sufficient statistics to the snapshot the edge decides from.

The learner never sees events: the store hands it, per full context path and
arm, the decayed sums of exposures and (fractional) rewards, so one run costs
O(cells + segments x arms) (plus sorting the paths, for reproducible float
sums) and a Monte Carlo whose size depends only on segments x arms x draws,
however much traffic the experiment had.

Steps: aggregate the cells into every observed prefix of the feature paths
(the segment tree); give each segment a Beta posterior per arm, shrunk
towards its parent's; and estimate by Monte Carlo, for exactly the edge's
procedure in ``core.decide``, the probability that each arm is chosen
(:mod:`control_plane.learning.beta`).
"""

from __future__ import annotations

import hashlib
import json
import math
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from control_plane.experiments import ExperimentSpec, Prior
from control_plane.learning.beta import (
    MIN_DRAWS,
    FloatArray,
    allocation,
)
from control_plane.learning.ranking import FloorProgress, with_ranking
from control_plane.storage.stats import Cells, CellStats
from core import KEY_RE, Segment, Snapshot, is_text

__all__ = [
    "GLOBAL_KEY",
    "default_seed",
    "learn",
    "posteriors",
    "segment_key",
    "spec_snapshot",
    "split_cells",
]


GLOBAL_KEY = "all"
# float32 keeps 1e-3 well away from 0 and from subnormals, and the edge's
# sampler handles shapes this small (its gammas may underflow, see core.sampling).
MIN_SHAPE = 1e-3


def segment_key(features: Sequence[str], path: Sequence[str]) -> str:
    """The key of the segment matching ``features[:len(path)] == path``.

    Readable (``device:mobile.source:search``) when that is a valid key;
    otherwise ``seg-`` and 16 hex digits of a hash of the path.  A '.' in a
    name or value would make readable keys ambiguous ("device:a.source:b" is
    both one level and two), so those are hashed too; hashed keys contain no
    ':' and readable ones always do, so the two kinds never collide.
    """
    if not path:
        return GLOBAL_KEY
    pairs = list(zip(features, path, strict=False))
    if not any("." in name or "." in value for name, value in pairs):
        key = ".".join(f"{name}:{value}" for name, value in pairs)
        if KEY_RE.fullmatch(key):
            return key
    canonical = json.dumps([list(pair) for pair in pairs], separators=(",", ":"))
    return "seg-" + hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]


def default_seed(experiment: str, version: int) -> int:
    """The Monte Carlo seed of a learner run: the same inputs give the same bytes."""
    digest = hashlib.sha256(f"perch:learner:{experiment}:{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


# Longest feature value a segment may hold: what the edge and the event schema accept.
MAX_VALUE_CHARS = 128


def split_cells(
    spec: ExperimentSpec, cells: Cells
) -> tuple[dict[tuple[str, ...], dict[str, CellStats]], Counter[str]]:
    """The cells the learner can use, and how many (path, arm) cells it skips, by reason.

    Stored statistics come from events that passed validation, but validation rules
    change and bugs happen: one unusable cell must never stop an experiment from
    publishing. So a path that is not one text value per feature (``bad_path``) or an
    arm the spec does not have (``unknown_arm``) is left out and counted, not raised.
    """
    arm_keys = {arm.key for arm in spec.arms}
    depth = len(spec.features)
    usable: dict[tuple[str, ...], dict[str, CellStats]] = {}
    skipped: Counter[str] = Counter()
    for path, by_arm in cells.items():
        if not (
            isinstance(path, tuple)
            and len(path) == depth
            and all(is_text(v) and len(v) <= MAX_VALUE_CHARS for v in path)
        ):
            skipped["bad_path"] += len(by_arm)
            continue
        for arm, cell in by_arm.items():
            if arm in arm_keys:
                usable.setdefault(path, {})[arm] = cell
            else:
                skipped["unknown_arm"] += 1
    return usable, skipped


def _aggregate(spec: ExperimentSpec, cells: Cells) -> dict[tuple[str, ...], tuple[list[float], list[float]]]:
    """Exposures and rewards per arm for every prefix of every path in ``cells`` (see split_cells)."""
    arm_index = {arm.key: i for i, arm in enumerate(spec.arms)}
    depth, n_arms = len(spec.features), len(spec.arms)
    totals: dict[tuple[str, ...], tuple[list[float], list[float]]] = {(): ([0.0] * n_arms, [0.0] * n_arms)}
    # Sorted so that float sums, hence the snapshot's bytes, do not depend on
    # the order the store returned its rows in.
    for path in sorted(cells):
        row_n = [0.0] * n_arms
        row_r = [0.0] * n_arms
        for arm, stats in cells[path].items():
            n = float(stats.exposures)
            row_n[arm_index[arm]] = n
            row_r[arm_index[arm]] = min(float(stats.reward), n)
        for k in range(depth + 1):
            acc_n, acc_r = totals.setdefault(path[:k], ([0.0] * n_arms, [0.0] * n_arms))
            for a in range(n_arms):
                acc_n[a] += row_n[a]
                acc_r[a] += row_r[a]
    return totals


def _too_few_units(spec: ExperimentSpec, units: Mapping[tuple[str, ...], int]) -> set[tuple[str, ...]]:
    """Prefixes (segments) with fewer than ``spec.min_segment_units`` distinct units under them.

    A unit seen in two paths counts twice, so this errs towards keeping a segment; what it stops
    is one client inventing values (200 junk devices from one cookie) to grow the snapshot.
    """
    under: dict[tuple[str, ...], int] = {}
    for path, count in units.items():
        for k in range(1, len(path) + 1):
            under[path[:k]] = under.get(path[:k], 0) + count
    return {prefix for prefix, count in under.items() if count < spec.min_segment_units}


def _segment_tree(
    spec: ExperimentSpec, totals: Mapping[tuple[str, ...], float], excluded: set[tuple[str, ...]]
) -> list[tuple[str, ...]]:
    """Paths of the kept segments: global, then level by level, busiest first."""
    levels: list[list[tuple[float, str, tuple[str, ...]]]] = [[] for _ in range(len(spec.features) + 1)]
    for path, exposures in totals.items():
        if path and (path in excluded or any(path[:k] in excluded for k in range(1, len(path)))):
            continue  # too few distinct visitors: they are served by the nearest kept ancestor
        levels[len(path)].append((-exposures, segment_key(spec.features, path), path))
    ordered = [item for level in levels for item in sorted(level)]
    # Whole levels precede deeper ones, so cutting the list drops the least
    # exposed segments of the deepest level first and never keeps a child
    # without its parent.
    kept = ordered[: spec.max_segments]
    if len({key for _, key, _ in kept}) != len(kept):
        raise ValueError("two segments hash to the same key; this should not happen in 2**64")
    return [path for _, _, path in kept]


def posteriors(
    exposures: FloatArray, rewards: FloatArray, parents: Sequence[int | None], prior: Prior
) -> tuple[FloatArray, FloatArray]:
    """Beta (alpha, beta) per (segment, arm), each child shrunk towards its parent.

    The global segment (row 0) gets ``prior + data``; a child starts from
    ``prior.shrinkage`` pseudo-observations at its parent's posterior mean, so
    a cold segment behaves like its parent and a busy one like its own data.
    Parents must precede their children.
    """
    n = np.asarray(exposures, dtype=np.float64)
    r = np.minimum(np.asarray(rewards, dtype=np.float64), n)
    if (
        n.ndim != 2
        or r.shape != n.shape
        or not parents
        or len(parents) != n.shape[0]
        or parents[0] is not None
    ):
        raise ValueError(
            "exposures and rewards must be (segments, arms), with one parent per segment, none first"
        )
    alpha = np.empty_like(n)
    beta = np.empty_like(n)
    alpha[0] = prior.alpha + r[0]
    beta[0] = prior.beta + (n[0] - r[0])
    depth = np.zeros(len(parents), dtype=np.int64)
    parent = np.zeros(len(parents), dtype=np.int64)
    for i in range(1, len(parents)):
        p = parents[i]
        if p is None or not 0 <= p < i:
            raise ValueError(f"segment {i}: parent {p!r} must be an earlier segment")
        parent[i] = p
        depth[i] = depth[p] + 1
    np.maximum(alpha[:1], MIN_SHAPE, out=alpha[:1])
    np.maximum(beta[:1], MIN_SHAPE, out=beta[:1])
    # One vectorised step per level: every parent is finished before its children.
    for level in range(1, int(depth.max(initial=0)) + 1):
        idx = np.flatnonzero(depth == level)
        up = parent[idx]
        mean = alpha[up] / (alpha[up] + beta[up])
        alpha[idx] = np.maximum(prior.shrinkage * mean + r[idx], MIN_SHAPE)
        beta[idx] = np.maximum(prior.shrinkage * (1.0 - mean) + (n[idx] - r[idx]), MIN_SHAPE)
    return alpha, beta


def _float32_table(values: npt.NDArray[np.floating[Any]]) -> array[float]:
    return array("f", values.astype(np.float32).tobytes())


def learn(
    spec: ExperimentSpec,
    cells: Cells,
    *,
    version: int,
    now_ms: int,
    draws: int = 20_000,
    seed: int | None = None,
    units: Mapping[tuple[str, ...], int] | None = None,
    recent: Cells | None = None,
    progress: FloorProgress | None = None,
) -> Snapshot:
    """The snapshot for ``spec`` given decayed statistics per (full path, arm).

    ``cells`` is keyed by the full tuple of values of ``spec.features`` and
    then by arm key; missing arms count as zero.  The Monte Carlo seed
    defaults to :func:`default_seed` of (experiment, version), so a rerun
    gives identical bytes (with the same numpy). ``units`` (distinct visitors per full path)
    keeps a segment out of the snapshot until ``spec.min_segment_units`` visitors are under it.
    A ranked experiment learns its items as arms, then gets its ranking (floors from ``progress``,
    this period's exposures per item, and per-position propensities: learning.ranking).
    """
    snapshot = _learn_arms(
        spec, cells, version=version, now_ms=now_ms, draws=draws, seed=seed, units=units, recent=recent
    )
    if spec.ranking is None:
        return snapshot
    rng = np.random.default_rng((default_seed(spec.key, version) if seed is None else seed) + 1)
    return with_ranking(spec, snapshot, progress, rng)


def _learn_arms(
    spec: ExperimentSpec,
    cells: Cells,
    *,
    version: int,
    now_ms: int,
    draws: int,
    seed: int | None,
    units: Mapping[tuple[str, ...], int] | None,
    recent: Cells | None,
) -> Snapshot:
    if spec.model == "contextual":
        from control_plane.learning.contextual_learner import learn_contextual

        return learn_contextual(spec, cells, version=version, now_ms=now_ms, units=units, recent=recent)
    if draws < MIN_DRAWS:
        raise ValueError(f"draws={draws}: at least {MIN_DRAWS} are needed for usable propensities")
    totals = _aggregate(spec, split_cells(spec, cells)[0])
    excluded = _too_few_units(spec, units) if units is not None else set()
    paths = _segment_tree(spec, {path: math.fsum(n) for path, (n, _) in totals.items()}, excluded)
    index = {path: i for i, path in enumerate(paths)}
    parents = [None if not path else index[path[:-1]] for path in paths]
    segments = [
        Segment(segment_key(spec.features, path), dict(zip(spec.features, path, strict=False)), parent)
        for path, parent in zip(paths, parents, strict=True)
    ]
    # Counts come from all paths under a prefix, including segments cut by
    # max_segments, whose visitors the edge serves from their ancestors.
    exposures = np.array([totals[path][0] for path in paths], dtype=np.float64)
    rewards = np.array([totals[path][1] for path in paths], dtype=np.float64)
    alpha, beta = posteriors(exposures, rewards, parents, spec.prior)
    # The edge samples from the float32 values in the snapshot, so the
    # allocation is computed for those, not for the float64 ones.
    alpha32 = alpha.astype(np.float32)
    beta32 = beta.astype(np.float32)
    rng = np.random.default_rng(default_seed(spec.key, version) if seed is None else seed)
    table = allocation(alpha32.astype(np.float64), beta32.astype(np.float64), spec.floor, draws, rng)
    return spec_snapshot(
        spec,
        version=version,
        now_ms=now_ms,
        segments=segments,
        alpha=_float32_table(alpha32),
        beta=_float32_table(beta32),
        allocation=_float32_table(table),
    )


def spec_snapshot(spec: ExperimentSpec, *, version: int, now_ms: int, **learnt: Any) -> Snapshot:
    """The snapshot of ``spec`` as of ``version``: the spec's fields plus what was ``learnt``
    (segments, alpha, beta, allocation and, for a contextual experiment, the model)."""
    return Snapshot(
        experiment=spec.key,
        version=version,
        created_at=now_ms,
        max_age_s=spec.max_age_s,
        salt=spec.salt,
        default_arm=spec.default_arm,
        holdout=spec.holdout,
        floor=spec.floor,
        arms=spec.arms,
        context_features=spec.features,
        **learnt,
    )
