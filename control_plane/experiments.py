"""What an operator defines: an experiment, validated.

An :class:`ExperimentSpec` is the control plane's unit of configuration; it
is stored as JSON (versioned and audited by the store), read back into this
frozen dataclass, and handed to the learner.  Validation errors are
:class:`ExperimentError` (a ``ValueError``) naming the field and the rule, so
the API can answer 422 with the message as is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from core import KEY_RE, Arm, PerchError, SnapshotError, is_text

__all__ = ["ExperimentError", "ExperimentSpec", "Prior", "Reward"]

MAX_FEATURES = 4  # segment depth: global + one level per feature


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
        features = tuple(self.features)
        if len(features) > MAX_FEATURES or len(set(features)) != len(features):
            raise ExperimentError(f"features {list(features)}: at most {MAX_FEATURES}, no repeats")
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
        object.__setattr__(self, "arms", arms)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "salt", self.salt or self.key)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["arms"] = [{k: v for k, v in asdict(a).items() if v is not None} for a in self.arms]
        out["features"] = list(self.features)
        return out

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
            for i, item in enumerate(arms):
                if (
                    not isinstance(item, Mapping)
                    or set(item) - {"key", "payload", "html"}
                    or "key" not in item
                ):
                    raise ExperimentError(f"arms[{i}] must be an object with key and optional payload, html")
                parsed_arms.append(Arm(item["key"], item.get("payload"), item.get("html")))
            reward = raw.pop("reward", None) or {}
            prior = raw.pop("prior", None) or {}
            if not isinstance(reward, Mapping) or not isinstance(prior, Mapping):
                raise ExperimentError("reward and prior must be objects")
            return cls(arms=parsed_arms, reward=Reward(**reward), prior=Prior(**prior), **raw)
        except SnapshotError as exc:  # an arm breaking the snapshot's rules
            raise ExperimentError(str(exc)) from None
        except TypeError as exc:  # unexpected keyword in reward/prior
            raise ExperimentError(f"invalid field: {exc}") from None
