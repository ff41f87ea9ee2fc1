"""Behavioural clusters: visitors grouped by what they are interested in (k-means on affinities).

Each profile's category affinities (shares that sum to one) are a point in one dimension per
category (the ``MAX_CATEGORIES`` categories with the most signals). scikit-learn's
``MiniBatchKMeans`` groups a sample of them; **k is the one of 2..``max_k`` with the highest mean
silhouette** on that sample (how much closer each point is to its own cluster than to the next
one: a k past the real number of groups splits a group and lowers it). A visitor's cluster is then
the nearest centroid.

Refitting renumbers clusters, and a contextual model learns per cluster label, so a refit keeps a
label whenever a new centroid is the nearest to an old one (greedy, closest pairs first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_CATEGORIES", "MIN_POINTS", "Clusters", "fit"]

MAX_CATEGORIES = 32
MIN_POINTS = 20  # fewer profiles with affinities than this: no clusters yet


@dataclass(frozen=True)
class Clusters:
    categories: tuple[str, ...]
    centroids: tuple[tuple[float, ...], ...]
    labels: tuple[int, ...]  # each centroid's stable label ("c<label>")
    silhouette: float
    fitted_ms: int

    def vector(self, affinities: Mapping[str, float]) -> np.ndarray:
        return np.array([affinities.get(c, 0.0) for c in self.categories], dtype=float)

    def assign(self, affinities: Mapping[str, float]) -> int | None:
        """The label of the nearest centroid, or None for a visitor without affinities."""
        if not affinities:
            return None
        distances = np.linalg.norm(np.asarray(self.centroids) - self.vector(affinities), axis=1)
        return self.labels[int(np.argmin(distances))]

    def top(self, label: int, n: int = 3) -> list[str]:
        """The categories a cluster favours most, for the dashboard and for ``why``."""
        centroid = self.centroids[self.labels.index(label)]
        order = sorted(range(len(centroid)), key=lambda i: -centroid[i])
        return [self.categories[i] for i in order[:n] if centroid[i] > 0.05]

    def to_dict(self) -> dict[str, Any]:
        return {
            "categories": list(self.categories),
            "centroids": [list(c) for c in self.centroids],
            "labels": list(self.labels),
            "silhouette": self.silhouette,
            "fitted_ms": self.fitted_ms,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Clusters:
        return cls(
            tuple(doc["categories"]),
            tuple(tuple(float(x) for x in c) for c in doc["centroids"]),
            tuple(int(x) for x in doc["labels"]),
            float(doc["silhouette"]),
            int(doc["fitted_ms"]),
        )


def fit(
    affinities: Sequence[Mapping[str, float]],
    *,
    max_k: int,
    seed: int,
    now_ms: int,
    previous: Clusters | None = None,
) -> Clusters | None:
    """Clusters of ``affinities`` (a sample of profiles'), or None with too few to group."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import silhouette_score

    points = [a for a in affinities if a]
    if len(points) < MIN_POINTS:
        return None
    mass: dict[str, float] = {}
    for a in points:
        for category, share in a.items():
            mass[category] = mass.get(category, 0.0) + share
    categories = tuple(sorted(mass, key=lambda c: (-mass[c], c))[:MAX_CATEGORIES])
    x = np.array([[a.get(c, 0.0) for c in categories] for a in points], dtype=float)
    best: tuple[float, np.ndarray] | None = None
    for k in range(2, min(max_k, len(points) - 1) + 1):
        model = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=1024).fit(x)
        if len(set(model.labels_)) < 2:
            continue
        score = float(silhouette_score(x, model.labels_, sample_size=min(len(x), 2000), random_state=seed))
        if best is None or score > best[0]:
            best = (score, model.cluster_centers_)
    if best is None:
        return None
    score, centers = best
    labels = _stable_labels(centers, categories, previous)
    return Clusters(
        categories,
        tuple(tuple(round(float(v), 6) for v in c) for c in centers),
        labels,
        round(score, 6),
        now_ms,
    )


def _stable_labels(
    centers: np.ndarray, categories: tuple[str, ...], previous: Clusters | None
) -> tuple[int, ...]:
    """Labels for ``centers``: an old centroid's label goes to the nearest new one (closest pairs
    first); the rest get labels not used before."""
    if previous is None:
        return tuple(range(len(centers)))
    old = np.array(
        [
            [dict(zip(previous.categories, c, strict=True)).get(k, 0.0) for k in categories]
            for c in previous.centroids
        ]
    )
    pairs = sorted(
        (float(np.linalg.norm(centers[i] - old[j])), i, j)
        for i in range(len(centers))
        for j in range(len(old))
    )
    labels: dict[int, int] = {}
    taken: set[int] = set()
    for _, i, j in pairs:
        if i not in labels and previous.labels[j] not in taken:
            labels[i] = previous.labels[j]
            taken.add(previous.labels[j])
    fresh = (n for n in range(len(centers) + len(previous.labels) + 1) if n not in taken)
    return tuple(labels[i] if i in labels else next(fresh) for i in range(len(centers)))
