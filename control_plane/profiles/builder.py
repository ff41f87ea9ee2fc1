"""The profile builder: behavioural signals and stated attributes become each visitor's profile.

Incremental: a cycle rebuilds only the visitors with signals or attributes since the last cycle
(watermarks in ``profile_state``), plus those whose profile is older than ``rebuild_after_s``
(recency and churn move with time alone), at most ``batch`` of each per cycle. So a cycle costs
O(changed visitors), whatever the number of profiles held.

Per visitor, from their signals of the last ``window_days`` (newest ``max_signals``), each weighed
by ``2^(-age / half_life)`` (14 days by default):

* **category affinities**: each category's share of the weighed signals that name one (a page
  view 1, a search 1, a custom signal 1, time on page min(minutes, 10) / 2, scroll depth / 100,
  add to cart 3, purchase 5); ``interest`` is the largest, once two signals name categories;
* **engagement score** = 1 - exp(-weighed signals / 10), in [0, 1);
* **lifetime value** = the sum of purchase values in the window;
* **churn risk** = 1 - exp(-days since the last signal / the visitor's mean gap between active
  days), 7 days for a visitor seen on one day only;
* **cluster**: the nearest behavioural cluster (control_plane.profiles.clusters).

Published as categorical features (what a contextual model one-hot encodes): ``interest``,
``engagement`` and ``ltv`` as low / mid / high by the **tertiles of a sample of the profiles held**
(calibrated on the data when the clusters are refitted; ``ltv`` is ``none`` without a purchase),
``churn`` as low (< 0.5) / mid (< 0.8) / high, ``cluster`` as ``c<n>``, and the stated attributes
the operator lists as features (never a sensitive one, core.profile). ``because`` words say what a
visitor would recognise: "you viewed running shoes".
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from control_plane.distribution.kv_publishers import KVPublisher
from control_plane.profiles.clusters import Clusters, fit
from control_plane.storage import profiles as rows
from control_plane.storage.store import Store
from core import PerchError, Profile, ProfileError, encode_profile, is_sensitive, profile_key
from core.profile import MAX_BECAUSE

__all__ = [
    "BuildResult",
    "ProfileSettings",
    "SettingsError",
    "build_cycle",
    "profile_cycle",
    "profile_of",
    "publish_profiles",
]

log = logging.getLogger("perch.profiles")

DAY_MS = 86_400_000
_WEIGHTS = {"page_view": 1.0, "search": 1.0, "custom": 1.0, "add_to_cart": 3.0, "purchase": 5.0}
_DEFAULT_BANDS = {"engagement": [0.33, 0.66], "ltv": [50.0, 200.0]}
_SAMPLE = 5000  # profiles read to calibrate bands and fit clusters
_LIKE = "you browse like others interested in "


class SettingsError(PerchError, ValueError):
    """A profile setting breaks its rule; the message says which."""


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    attributes: frozenset[str] = frozenset()  # stated attributes published as features
    half_life_days: float = 14.0
    window_days: int = 365
    max_signals: int = 2000
    batch: int = 10_000
    rebuild_after_s: int = 7 * 86_400
    refit_after_s: int = 7 * 86_400
    max_k: int = 8
    seed: int = 1

    def __post_init__(self) -> None:
        for name in sorted(self.attributes):
            if is_sensitive(name):
                raise SettingsError(
                    f"attribute {name!r} is sensitive (core.profile): it may not be a feature"
                )
        if not 0 < self.half_life_days <= 365:
            raise SettingsError(f"half_life_days={self.half_life_days}, must be in (0, 365]")
        if not 2 <= self.max_k <= 32:
            raise SettingsError(f"max_k={self.max_k}, must be in [2, 32]")
        for name in ("window_days", "max_signals", "batch", "rebuild_after_s", "refit_after_s"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name}={getattr(self, name)}, must be >= 1")


@dataclass
class BuildResult:
    built: int = 0
    changed: int = 0
    refitted: bool = False
    clusters: int = 0
    published: int = 0
    notes: list[str] = field(default_factory=list)


def _band(value: float, cuts: Sequence[float]) -> str:
    return "low" if value < cuts[0] else "mid" if value < cuts[1] else "high"


def _words(category: str) -> str:
    return category.replace("-", " ").replace("_", " ")


def scores(
    signals: Sequence[tuple[int, str, str | None, float | None]], now_ms: int, half_life_days: float
) -> dict[str, Any]:
    """The numbers of one visitor's profile (see the module's formulas)."""
    weighed = 0.0
    by_category: dict[str, float] = {}
    named = 0
    ltv = 0.0
    days: set[int] = set()
    for ts, kind, category, value in signals:
        decay = 2.0 ** (-max(0, now_ms - ts) / (half_life_days * DAY_MS))
        if kind == "time_on_page":
            w = min((value or 0.0) / 60.0, 10.0) / 2.0
        elif kind == "scroll":
            w = (value or 0.0) / 100.0
        else:
            w = _WEIGHTS.get(kind, 1.0)
        weighed += w * decay
        if category:
            by_category[category] = by_category.get(category, 0.0) + w * decay
            named += 1
        if kind == "purchase" and value:
            ltv += value
        days.add(ts // DAY_MS)
    total = sum(by_category.values())
    affinities = {c: round(v / total, 6) for c, v in by_category.items() if total > 0 and v / total >= 0.01}
    last = max((ts for ts, *_ in signals), default=now_ms)
    recency_days = max(0.0, (now_ms - last) / DAY_MS)
    ordered = sorted(days)
    gap = (ordered[-1] - ordered[0]) / (len(ordered) - 1) if len(ordered) > 1 else 7.0
    return {
        "engagement": round(1.0 - math.exp(-weighed / 10.0), 6),
        "ltv": round(ltv, 2),
        "churn": round(1.0 - math.exp(-recency_days / max(gap, 1.0)), 6),
        "recency_days": round(recency_days, 3),
        "active_days": len(ordered),
        "affinities": dict(sorted(affinities.items(), key=lambda kv: -kv[1])[:8]),
        "interest": max(by_category, key=lambda c: (by_category[c], c)) if named >= 2 else None,
    }


def profile_of(
    numbers: Mapping[str, Any],
    stated: Mapping[str, str],
    *,
    bands: Mapping[str, Sequence[float]],
    clusters: Clusters | None,
    settings: ProfileSettings,
    now_ms: int,
) -> dict[str, Any]:
    """A visitor's profile document: their numbers, features, ``because`` words and flag."""
    features: dict[str, str] = {}
    because: dict[str, str] = {}
    if numbers.get("active_days"):
        features["engagement"] = _band(numbers["engagement"], bands["engagement"])
        features["ltv"] = "none" if numbers["ltv"] <= 0 else _band(numbers["ltv"], bands["ltv"])
        features["churn"] = "low" if numbers["churn"] < 0.5 else "mid" if numbers["churn"] < 0.8 else "high"
        interest = numbers.get("interest")
        if interest:
            features["interest"] = interest
            because["interest"] = f"you viewed {_words(interest)}"
        label = clusters.assign(numbers["affinities"]) if clusters is not None else None
        if label is not None and clusters is not None:
            features["cluster"] = f"c{label}"
            top = clusters.top(label)
            while top and len(_LIKE + ", ".join(map(_words, top))) > MAX_BECAUSE:
                top = top[:-1]  # long category names: fewer of them (a profile's words are bounded)
            if top:
                because["cluster"] = _LIKE + ", ".join(map(_words, top))
    for name in sorted(settings.attributes):
        if name in stated and name != rows.DNP:
            features[name] = stated[name]
    return {
        "numbers": dict(numbers),
        "features": features,
        "because": because,
        "dnp": stated.get(rows.DNP) == "true",
        "updated_ms": now_ms,
    }


def _digest(doc: Mapping[str, Any]) -> str:
    """What KV holds for a profile: its features, words and flag (not its numbers or time)."""
    shown = {k: doc[k] for k in ("features", "because", "dnp")}
    return hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()


def _calibrate(docs: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    def tertiles(values: list[float], default: list[float]) -> list[float]:
        if len(values) < 30:
            return default
        values.sort()
        return [values[len(values) // 3], values[2 * len(values) // 3]]

    return {
        "engagement": tertiles([d["numbers"]["engagement"] for d in docs], _DEFAULT_BANDS["engagement"]),
        "ltv": tertiles(
            [d["numbers"]["ltv"] for d in docs if d["numbers"]["ltv"] > 0], _DEFAULT_BANDS["ltv"]
        ),
    }


def build_cycle(store: Store, settings: ProfileSettings, now_ms: int) -> BuildResult:
    """Rebuild the profiles of the visitors who changed (and the oldest ones); see the module."""
    out = BuildResult()
    with store.engine.connect() as conn:
        seq, ms = rows.state(conn, "watermark", [0, 0])
        changed, new_seq, new_ms = rows.changed_since(conn, seq, ms, settings.batch)
        due = rows.stale(conn, now_ms - settings.rebuild_after_s * 1000, settings.batch)
        bands = rows.state(conn, "bands", _DEFAULT_BANDS)
        held = rows.state(conn, "clusters", None)
        clusters = Clusters.from_dict(held) if held else None
        sample = None
        if clusters is None or now_ms - clusters.fitted_ms > settings.refit_after_s * 1000:
            sample = [json.loads(d) for d in rows.sample_docs(conn, _SAMPLE)]
    if sample is not None:
        refit = fit(
            [d["numbers"]["affinities"] for d in sample],
            max_k=settings.max_k,
            seed=settings.seed,
            now_ms=now_ms,
            previous=clusters,
        )
        bands = _calibrate(sample)
        if refit is not None:
            clusters, out.refitted = refit, True
    out.clusters = len(clusters.centroids) if clusters is not None else 0
    units = {**due, **changed}
    since = now_ms - settings.window_days * DAY_MS
    built = []
    hashes = sorted(units)
    with store.engine.connect() as conn:
        signals = rows.signals_of(conn, hashes, since, settings.max_signals)
        stated = rows.attributes_of(conn, hashes)
    for unit_hash in hashes:
        numbers = scores(signals.get(unit_hash, []), now_ms, settings.half_life_days)
        doc = profile_of(
            numbers,
            stated.get(unit_hash, {}),
            bands=bands,
            clusters=clusters,
            settings=settings,
            now_ms=now_ms,
        )
        built.append(
            {
                "unit_hash": unit_hash,
                "tag": units[unit_hash],
                "doc": json.dumps(doc, sort_keys=True),
                "digest": _digest(doc),
                "built_ms": now_ms,
                "dnp": doc["dnp"],
                "cluster": doc["features"].get("cluster"),
            }
        )
    # As erasure writes (one at a time): a visitor erased since their signals were read above has
    # none left now, and their profile must not come back.
    with store.ingest_write() as conn:
        held = rows.units_with_data(conn, [r["unit_hash"] for r in built])
        built = [r for r in built if r["unit_hash"] in held]
        out.changed = rows.save_profiles(conn, built)
        rows.set_state(store, conn, "watermark", [new_seq, new_ms])
        rows.set_state(store, conn, "bands", bands)
        if clusters is not None:
            rows.set_state(store, conn, "clusters", clusters.to_dict())
    out.built = len(built)
    return out


def publish_profiles(store: Store, kv: KVPublisher, *, limit: int = 10_000) -> int:
    """Write the profiles whose KV value is missing or older, in bulk; how many were written."""
    with store.engine.connect() as conn:
        due = rows.unpublished(conn, limit)
    if not due:
        return 0
    items = {}
    for unit_hash, tag, raw, _ in due:
        doc = json.loads(raw)
        try:
            profile = Profile(
                features=doc["features"], because=doc["because"], dnp=doc["dnp"], updated_ms=doc["updated_ms"]
            )
            items[profile_key(tag)] = encode_profile(profile)
        except ProfileError as exc:  # one unusable profile must not stop the others (it is marked done)
            log.warning("profile of %s not published: %s", unit_hash[:12], exc)
    if items:
        kv.put_many(items)
    with store.write() as conn:
        rows.mark_published(conn, [(unit_hash, digest) for unit_hash, _, _, digest in due])
        gone = set(r[0] for r in due) - rows.existing(conn, [r[0] for r in due])
    if gone:
        # Erased while being published: their value may have landed after erasure deleted it
        # (erasure deletes it again after its own commit, for the other order).
        kv.delete_many([profile_key(tag) for unit_hash, tag, _, _ in due if unit_hash in gone])
    return len(due)


def profile_cycle(store: Store, kv: KVPublisher, settings: ProfileSettings, now_ms: int) -> BuildResult:
    """One scheduled cycle (``perch serve``'s schedule, ``perch consume --publish``): rebuild the
    profiles of the visitors who changed, then publish those that did."""
    result = build_cycle(store, settings, now_ms)
    result.published = publish_profiles(store, kv)
    return result
