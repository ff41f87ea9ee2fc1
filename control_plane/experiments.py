"""What an operator defines: an experiment, validated.

An :class:`ExperimentSpec` is the control plane's unit of configuration; it
is stored as JSON (versioned and audited by the store), read back into this
frozen dataclass, and handed to the learner.  Validation errors are
:class:`ExperimentError` (a ``ValueError``) naming the field and the rule, so
the API can answer 422 with the message as is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from control_plane.fragments import one_element
from core import KEY_RE, MAX_SLOTS, Arm, PerchError, SnapshotError, is_text, quota
from core.signals import CATEGORY_RE

__all__ = ["Contextual", "ExperimentError", "ExperimentSpec", "Prior", "Reward"]

MAX_FEATURES = 4  # segment depth: global + one level per feature
MAX_CONTEXT_FEATURES = 16  # what a snapshot reports (core.snapshot), and so what a contextual model can read
MODELS = ("segments", "contextual")
AUTO_PAIRS_UP_TO = 4
# New contextual experiments forget evidence with this half-life unless told otherwise: a world that
# changes must not be outvoted by months of old traffic (benchmarks/bench_learning.py).
DEFAULT_HALF_LIFE_S = 7 * 86400.0


class ExperimentError(PerchError, ValueError):
    """An experiment definition breaks a rule; the message names it."""


def _number(name: str, value: object, low: float, high: float, *, low_open: bool = False) -> float:
    # A huge int must be refused before math.isfinite turns it into a float (OverflowError).
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, int) and abs(value) > 2**53)
        or not math.isfinite(value)
    ):
        raise ExperimentError(f"{name}={value!r}, must be a number"[:300])
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ExperimentError(f"{name}={value!r}, must be in {bracket}{low}, {high}]")
    return float(value)


@dataclass(frozen=True, slots=True)
class Reward:
    """How outcomes become Beta updates.

    ``binary``: a decision converts or not (first outcome counts).  ``numeric``:
    each outcome's value, clipped to [0, ``max_value``] and scaled to [0, 1],
    is a fractional success (Beta-Bernoulli with continuous rewards).  Outcomes
    later than ``window_s`` after their exposure are counted as late, not learnt.
    """

    kind: str = "binary"
    window_s: int = 24 * 3600
    max_value: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("binary", "numeric"):
            raise ExperimentError(f"reward.kind={self.kind!r}, must be 'binary' or 'numeric'")
        if (
            isinstance(self.window_s, bool)
            or not isinstance(self.window_s, int)
            or not 1 <= self.window_s <= 90 * 86400
        ):
            raise ExperimentError(f"reward.window_s={self.window_s!r}, must be an integer in [1, 7776000]")
        _number("reward.max_value", self.max_value, 0.0, 1e12, low_open=True)


@dataclass(frozen=True, slots=True)
class Prior:
    """Beta prior of every arm in the global segment; ``shrinkage`` is how many
    pseudo-observations of its parent's mean a child segment starts from."""

    alpha: float = 1.0
    beta: float = 1.0
    shrinkage: float = 20.0

    def __post_init__(self) -> None:
        _number("prior.alpha", self.alpha, 0.0, 1e6, low_open=True)
        _number("prior.beta", self.beta, 0.0, 1e6, low_open=True)
        _number("prior.shrinkage", self.shrinkage, 0.0, 1e6, low_open=True)


@dataclass(frozen=True, slots=True)
class Contextual:
    """How a contextual experiment encodes its features and explores.

    Every feature is categorical (one column per value among the ``max_values`` most
    exposed, plus ``other`` and ``unknown``) unless listed in ``numeric`` (standardised).
    ``interactions`` adds a column per value pair of the named features (by default every pair of
    categorical features when there are 2 to 4). ``explore``
    multiplies the posterior variance of every Thompson draw; ``prior_scale`` is the prior
    standard deviation of feature weights in logits, estimated from the data (Laplace
    evidence over a grid) when null.
    """

    # None: every pair of categorical features, when there are 2 to 4 of them (each pair its own
    # block, shrunk by its own evidence-chosen scale); [] for none.
    interactions: Sequence[Sequence[str]] | None = None
    numeric: Sequence[str] = ()
    max_values: int = 20
    explore: float = 0.25
    prior_scale: float | None = None
    # The newest exposures the model is updated with last, each arm free to have drifted (0: off).
    recent_exposures: int = 5_000

    def __post_init__(self) -> None:
        if self.interactions is None:
            pass
        elif not isinstance(self.interactions, (list, tuple)) or len(self.interactions) > 8:
            raise ExperimentError("contextual.interactions: at most 8 lists of 2-4 feature names")
        pairs = []
        for item in self.interactions or ():
            if not isinstance(item, (list, tuple)) or not 2 <= len(item) <= 4 or len(set(item)) != len(item):
                raise ExperimentError(
                    f"contextual.interactions: {item!r} must be 2-4 distinct feature names"[:300]
                )
            pairs.append(tuple(item))
        if not isinstance(self.numeric, (list, tuple)):
            raise ExperimentError("contextual.numeric: a list of feature names")
        if (
            isinstance(self.max_values, bool)
            or not isinstance(self.max_values, int)
            or not 1 <= self.max_values <= 1000
        ):
            raise ExperimentError(
                f"contextual.max_values={self.max_values!r}, must be an integer in [1, 1000]"
            )
        _number("contextual.explore", self.explore, 0.0, 100.0)
        if (
            isinstance(self.recent_exposures, bool)
            or not isinstance(self.recent_exposures, int)
            or not 0 <= self.recent_exposures <= 10_000_000
        ):
            raise ExperimentError(
                f"contextual.recent_exposures={self.recent_exposures!r}, must be an integer in [0, 10000000]"
            )
        if self.prior_scale is not None:
            _number("contextual.prior_scale", self.prior_scale, 0.0, 100.0, low_open=True)
        object.__setattr__(self, "interactions", None if self.interactions is None else tuple(pairs))
        object.__setattr__(self, "numeric", tuple(self.numeric))


@dataclass(frozen=True, slots=True)
class Ranked:
    """A ranked decision point (core.ranking): ``slots`` of the arms (its items) are shown per request.

    ``groups`` maps item keys to their group (a content category, as profiles name interests), for
    the diversity quota: at least
    ``diversity`` of the positions (rounded up to whole positions) go to items outside the
    visitor's primary interest group. ``min_exposures`` per item per ``period_s`` (periods aligned
    to the Unix epoch, so a day is a UTC day) is the exposure floor: the learner forces an item into
    lists often enough to reach it before its score may push it out (0: no floor).
    """

    slots: int = 5
    diversity: float = 0.2
    groups: Mapping[str, str] = field(default_factory=dict)
    min_exposures: int = 0
    period_s: int = 86_400

    def __post_init__(self) -> None:
        slots = self.slots
        if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
            raise ExperimentError(f"ranking.slots={self.slots!r}, must be an integer in [1, {MAX_SLOTS}]")
        _number("ranking.diversity", self.diversity, 0.0, 1.0)
        if not isinstance(self.groups, Mapping):
            raise ExperimentError("ranking.groups: an object of item key -> group name")
        for item, group in self.groups.items():
            # A group is matched against the visitor's interest, a content category (core.signals).
            if not isinstance(group, str) or not CATEGORY_RE.fullmatch(group):
                raise ExperimentError(
                    f"ranking.groups[{item!r}]={group!r}: a group is a content category as perch.js "
                    "reports it, 1-64 of lowercase letters, digits and ' _-/.&', starting with a "
                    "letter or digit"[:300]
                )
        if (
            isinstance(self.min_exposures, bool)
            or not isinstance(self.min_exposures, int)
            or not 0 <= self.min_exposures <= 10**9
        ):
            raise ExperimentError(f"ranking.min_exposures={self.min_exposures!r}, must be an integer >= 0")
        if (
            isinstance(self.period_s, bool)
            or not isinstance(self.period_s, int)
            or not 10 <= self.period_s <= 366 * 86_400
        ):
            raise ExperimentError(
                f"ranking.period_s={self.period_s!r}, must be whole seconds from 10 to a year (366 days)"
            )
        object.__setattr__(self, "groups", dict(self.groups))


@dataclass(frozen=True, slots=True)
class ExperimentSpec:
    key: str
    arms: Sequence[Arm]
    default_arm: str
    holdout: float = 0.05
    floor: float = 0.05
    features: Sequence[str] = ()  # context features defining segments, outermost first
    reward: Reward = field(default_factory=Reward)
    prior: Prior = field(default_factory=Prior)
    half_life_s: float | None = None  # decay of old evidence; None keeps everything
    max_age_s: float = 6 * 3600.0  # snapshots older than this make the edge serve the default
    max_segments: int = 500
    # A segment is published only once this many distinct visitors are in it (the global one always).
    min_segment_units: int = 5
    salt: str = ""  # fixed at creation (defaults to the key): changing it would reshuffle everyone
    # "segments": a Beta posterior per (segment, arm); "contextual": a Bayesian logistic model over
    # the features (core.contextual). Stored experiments from before the field are segments.
    model: str = "segments"
    contextual: Contextual = field(default_factory=Contextual)
    # A ranked decision point (None: one arm per decision).
    ranking: Ranked | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not KEY_RE.fullmatch(self.key):
            raise ExperimentError(f"key {self.key!r}: must be 1-128 of letters, digits and '_.:-'")
        arms = tuple(self.arms)
        if not 2 <= len(arms) <= 100:
            raise ExperimentError(f"{len(arms)} arms, an experiment needs between 2 and 100")
        keys = [a.key for a in arms]
        if len(set(keys)) != len(keys):
            raise ExperimentError("arm keys must be unique")
        if self.default_arm not in keys:
            raise ExperimentError(f"default_arm {self.default_arm!r} is not one of the arms {keys}")
        _number("holdout", self.holdout, 0.0, 0.5)
        _number("floor", self.floor, 0.0, 1.0)
        if not isinstance(self.features, (list, tuple)):
            raise ExperimentError(f"features {self.features!r}: must be a list of feature names"[:300])
        if self.model not in MODELS:
            raise ExperimentError(f"model={self.model!r}, must be one of {list(MODELS)}"[:300])
        features = tuple(self.features)
        limit = MAX_FEATURES if self.model == "segments" else MAX_CONTEXT_FEATURES
        if len(features) > limit or len(set(features)) != len(features):
            raise ExperimentError(
                f"features {list(features)}: at most {limit} for model {self.model!r}, no repeats"[:300]
            )
        for name in features:
            if not is_text(name) or not name or len(name) > 64:
                raise ExperimentError(f"feature {name!r}: must be a name of 1-64 characters of UTF-8 text")
        if self.half_life_s is not None:
            _number("half_life_s", self.half_life_s, 60.0, 10 * 365 * 86400.0)
        _number("max_age_s", self.max_age_s, 60.0, 30 * 86400.0)
        if (
            isinstance(self.max_segments, bool)
            or not isinstance(self.max_segments, int)
            or not 1 <= self.max_segments <= 10_000
        ):
            raise ExperimentError(f"max_segments={self.max_segments!r}, must be an integer in [1, 10000]")
        if (
            isinstance(self.min_segment_units, bool)
            or not isinstance(self.min_segment_units, int)
            or not 1 <= self.min_segment_units <= 1_000_000
        ):
            raise ExperimentError(
                f"min_segment_units={self.min_segment_units!r}, must be an integer in [1, 1000000]"
            )
        if not isinstance(self.salt, str) or len(self.salt) > 128 or (self.salt and not is_text(self.salt)):
            raise ExperimentError(f"salt {self.salt!r}: must be a string of at most 128 characters"[:300])
        if not isinstance(self.contextual, Contextual):
            raise ExperimentError("contextual must be an object")
        named = set(self.contextual.numeric) | {
            n for pair in self.contextual.interactions or () for n in pair
        }
        stray = sorted(named - set(features))
        if stray:
            raise ExperimentError(
                f"contextual names {stray}, which are not in features {list(features)}"[:300]
            )
        self._check_ranking(arms)
        object.__setattr__(self, "arms", arms)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "salt", self.salt or self.key)

    def _check_ranking(self, arms: tuple[Arm, ...]) -> None:
        if self.ranking is None:
            return
        keys = [a.key for a in arms]
        if not isinstance(self.ranking, Ranked):
            raise ExperimentError("ranking must be an object")
        strays = sorted(set(self.ranking.groups) - set(keys))
        if strays:
            raise ExperimentError(f"ranking.groups names {strays}, which are not items (arms)"[:300])
        several = [a.key for a in arms if a.html is not None and not one_element(a.html)]
        if several:
            raise ExperimentError(
                f"items {several}: a ranked item's html must be one element (e.g. one <li>...</li>), "
                "the list's child that a click is credited through"[:300]
            )
        shown = min(self.ranking.slots, len(arms))
        if self.ranking.diversity < 1.0 and quota(self.ranking.diversity, shown) >= shown:
            raise ExperimentError(
                f"ranking: diversity {self.ranking.diversity} of {shown} position(s) rounds up to "
                "every position, so the best item could never be shown; use more slots, or "
                "diversity 0 (or 1 to mean it)"
            )

    def interaction_groups(self) -> tuple[tuple[str, ...], ...]:
        """The interactions the contextual model encodes: the declared ones, or by default every
        pair of categorical features when there are 2 to 4 of them (more would multiply columns)."""
        declared = self.contextual.interactions
        if declared is not None:
            return tuple(tuple(group) for group in declared)
        categorical = [f for f in self.features if f not in self.contextual.numeric]
        if not 2 <= len(categorical) <= AUTO_PAIRS_UP_TO:
            return ()
        return tuple(itertools.combinations(categorical, 2))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["arms"] = [{k: v for k, v in asdict(a).items() if v is not None} for a in self.arms]
        out["features"] = list(self.features)
        declared = self.contextual.interactions
        out["contextual"]["interactions"] = None if declared is None else [list(p) for p in declared]
        out["contextual"]["numeric"] = list(self.contextual.numeric)
        if self.ranking is None:
            del out["ranking"]  # a single-decision experiment's stored document stays as it was
        return out

    @classmethod
    def create(cls, doc: Mapping[str, Any]) -> ExperimentSpec:
        """A new experiment from an API body: the defaults of today, not of stored rows.

        With features and no ``model``, it is contextual; a contextual one without
        ``half_life_s`` forgets with :data:`DEFAULT_HALF_LIFE_S`.
        """
        if not isinstance(doc, Mapping):
            raise ExperimentError("an experiment must be a JSON object")
        doc = dict(doc)
        if "model" not in doc and doc.get("features"):
            doc["model"] = "contextual"
        if doc.get("model") == "contextual" and "half_life_s" not in doc:
            doc["half_life_s"] = DEFAULT_HALF_LIFE_S
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ExperimentSpec:
        """From JSON (API bodies, the store); unknown fields are an error, not ignored."""
        if not isinstance(doc, Mapping):
            raise ExperimentError("an experiment must be a JSON object")
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(doc) - allowed)
        if unknown:
            raise ExperimentError(f"unknown fields {unknown}; allowed: {sorted(allowed)}")
        missing = sorted({"key", "arms", "default_arm"} - set(doc))
        if missing:
            raise ExperimentError(f"missing fields {missing}")
        raw = dict(doc)
        try:
            arms = raw.pop("arms")
            if not isinstance(arms, list):
                raise ExperimentError("arms must be a list of {key, payload?, html?} objects")
            parsed_arms = []
            groups: dict[str, str] = {}
            for i, item in enumerate(arms):
                if (
                    not isinstance(item, Mapping)
                    or set(item) - {"key", "payload", "html", "group"}
                    or "key" not in item
                ):
                    raise ExperimentError(
                        f"arms[{i}] must be an object with key and optional payload, html, group"
                    )
                parsed_arms.append(Arm(item["key"], item.get("payload"), item.get("html")))
                if "group" in item:
                    groups[str(item["key"])] = item["group"]
            ranking = raw.pop("ranking", None)
            if ranking is not None and not isinstance(ranking, Mapping):
                raise ExperimentError("ranking must be an object")
            if groups and ranking is None:
                raise ExperimentError("arms have a group, which only a ranked experiment uses (add ranking)")
            declared = (ranking or {}).get("groups")
            declared = {} if declared is None else declared
            if not isinstance(declared, Mapping):
                raise ExperimentError("ranking.groups: an object of item key -> group name")
            declared = dict(declared)
            for item, group in groups.items():
                if item in declared and declared[item] != group:
                    raise ExperimentError(
                        f"item {item!r}: group given twice ({group!r} on the item, "
                        f"{declared[item]!r} in ranking.groups)"[:300]
                    )
            reward = raw.pop("reward", None) or {}
            prior = raw.pop("prior", None) or {}
            contextual = raw.pop("contextual", None) or {}
            if not all(isinstance(x, Mapping) for x in (reward, prior, contextual)):
                raise ExperimentError("reward, prior and contextual must be objects")
            return cls(
                arms=parsed_arms,
                reward=Reward(**reward),
                prior=Prior(**prior),
                contextual=Contextual(**contextual),
                ranking=None if ranking is None else Ranked(**{**ranking, "groups": {**declared, **groups}}),
                **raw,
            )
        except SnapshotError as exc:  # an arm breaking the snapshot's rules
            raise ExperimentError(str(exc)) from None
        except TypeError as exc:  # unexpected keyword in reward/prior
            raise ExperimentError(f"invalid field: {exc}") from None
