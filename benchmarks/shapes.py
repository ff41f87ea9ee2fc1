"""Synthetic snapshots, contexts and statistics of a given shape, from one fixed seed.

Every benchmark builds its data here, so the core benchmarks, the Pyodide
runs, the learner and the HTTP runs all speak of the same shapes:
``arms`` arms and ``segments`` segments (a global segment plus device x
source children), nothing downloaded.
"""

from __future__ import annotations

import random

from core import Arm, Block, ContextualModel, Segment, Snapshot

# The one seed every benchmark derives its data and generators from.
SEED = 20_260_101
CREATED_MS = 1_780_000_000_000
ARMS = (2, 10, 50)
SEGMENTS = (1, 50, 500)
SHAPES = tuple((a, s) for a in ARMS for s in SEGMENTS)
# The shape the README quotes: a handful of variants, device x source segments.
HEADLINE = (10, 50)
DEVICES = 7


def leaf_features(i: int) -> dict[str, str]:
    """Features of the ``i``-th segment (i >= 1) of every shape."""
    return {"device": f"d{i % DEVICES}", "source": f"s{i}"}


def snapshot_of_shape(
    arms: int,
    segments: int,
    seed: int = SEED,
    *,
    created_at: int = CREATED_MS,
    max_age_s: float = 3600.0,
    holdout: float = 0.0,
) -> Snapshot:
    """``arms`` arms; a global segment plus device x source children."""
    rng = random.Random(seed)
    segs = [Segment("all")]
    for i in range(1, segments):
        segs.append(Segment(f"seg-{i}", leaf_features(i), 0))
    alpha = [rng.uniform(1, 200) for _ in range(arms * segments)]
    beta = [a * rng.uniform(5, 40) for a in alpha]
    return Snapshot(
        experiment=f"bench-{arms}x{segments}",
        version=1,
        created_at=created_at,
        max_age_s=max_age_s,
        salt="bench",
        default_arm="a0",
        holdout=holdout,
        floor=0.05,
        arms=[Arm(f"a{i}", {"i": i}, f"<b>variant {i}</b>") for i in range(arms)],
        segments=segs,
        alpha=alpha,
        beta=beta,
        allocation=[1.0 / arms] * (arms * segments),
        context_features=("device", "source"),
    )


def context_for(segments: int) -> dict[str, str]:
    """A context matching the last (most specific) segment."""
    i = segments - 1
    return leaf_features(i) if i else {}


def leaf_paths(segments: int) -> list[tuple[str, ...]]:
    """Full (device, source) paths whose segment tree has exactly ``segments`` segments.

    The learner keeps the global segment, one per device seen and one per
    path, so ``segments - 1 - DEVICES`` distinct paths over all devices give
    ``segments`` (for 1 segment: an experiment without features, path ``()``).
    """
    if segments == 1:
        return [()]
    leaves = segments - 1 - DEVICES
    if leaves < DEVICES:
        raise ValueError(f"{segments} segments: need at least {2 * DEVICES + 1} for {DEVICES} devices")
    return [(f"d{i % DEVICES}", f"s{i}") for i in range(leaves)]


# The contextual shape of the targets: 10 arms, 6 categorical features of 14 learnt
# values each (plus other and unknown): 1 + 6 x 16 = 97 columns.
CONTEXTUAL = (10, 6, 14)


def contextual_snapshot(
    arms: int = CONTEXTUAL[0],
    features: int = CONTEXTUAL[1],
    values: int = CONTEXTUAL[2],
    seed: int = SEED,
    *,
    created_at: int = CREATED_MS,
    max_age_s: float = 3600.0,
) -> Snapshot:
    """A schema 2 snapshot: ``features`` categorical blocks, random posteriors with full covariances."""
    rng = random.Random(seed)
    names = [f"f{j}" for j in range(features)]
    blocks = [Block("categorical", (name,), tuple((f"v{i}",) for i in range(values))) for name in names]
    dim = 1 + features * (values + 2)
    mean = [rng.gauss(-3.0 if c == 0 else 0.0, 0.3) for _ in range(arms) for c in range(dim)]
    cov = []
    for _ in range(arms):
        for i in range(dim):
            for j in range(i, dim):
                cov.append(0.02 + rng.uniform(0, 0.01) if i == j else rng.uniform(-1e-4, 1e-4))
    return Snapshot(
        experiment=f"bench-ctx-{arms}x{dim}",
        version=1,
        created_at=created_at,
        max_age_s=max_age_s,
        salt="bench",
        default_arm="a0",
        holdout=0.0,
        floor=0.05,
        arms=[Arm(f"a{i}", {"i": i}, f"<b>variant {i}</b>") for i in range(arms)],
        segments=[Segment("all")],
        alpha=[1.0] * arms,
        beta=[1.0] * arms,
        allocation=[1.0 / arms] * arms,
        context_features=tuple(names),
        model=ContextualModel(arms, blocks, mean, cov, explore=1.0),
    )


def contextual_context(features: int = CONTEXTUAL[1]) -> dict[str, str]:
    """A visitor with every feature set, all but one to a learnt value."""
    return {f"f{j}": ("v3" if j else "never-seen") for j in range(features)}


# The ranked shape of issue 15's target: 5 positions from 50 items in 5 groups, over 50 segments.
RANKED = (50, 5, 5, 50)


def ranked_snapshot(
    items: int = RANKED[0], slots: int = RANKED[1], groups: int = RANKED[2], segments: int = RANKED[3]
) -> Snapshot:
    """A schema 3 snapshot as the learner makes it: every fifth item owed some forced exposures, and
    the per-position propensities estimated (control_plane.learning.ranking)."""
    import dataclasses

    import numpy as np

    from control_plane.learning.ranking import position_table
    from core import Ranking

    base = snapshot_of_shape(items, segments)
    names = [f"g{i % groups}" for i in range(items)]
    forced = [0.05 if i % 5 == 4 else 0.0 for i in range(items)] * segments
    snap = dataclasses.replace(
        base, experiment=f"bench-ranked-{slots}of{items}", ranking=Ranking(slots, 0.2, names, forced)
    )
    table = position_table(snap, np.random.default_rng(SEED), draws=500)
    assert snap.ranking is not None and table is not None
    return dataclasses.replace(
        snap, ranking=dataclasses.replace(snap.ranking, positions=table.ravel().tolist())
    )
