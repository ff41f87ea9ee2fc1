"""The posterior snapshot an edge decides from: its types and its rules.

A :class:`Snapshot` is validated when it is built, whether by the control
plane before encoding or by :func:`core.codec.decode_snapshot` at the edge,
so every snapshot that exists in memory obeys the rules below; every breach
raises :class:`SnapshotError` naming the rule.

Posteriors and allocation probabilities are flat ``array('f')`` tables in
segment-major order: the cell of (segment ``s``, arm ``a``) is ``s * A + a``.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from math import isfinite
from typing import Any

from core.contextual import ContextualModel
from core.errors import SnapshotError
from core.hashing import SUPPORTED_HASH_VERSIONS
from core.ranking import Ranking
from core.text import is_text

__all__ = [
    "KEY_RE",
    "MAX_ARMS",
    "MAX_CELLS",
    "MAX_SEGMENTS",
    "Arm",
    "Segment",
    "Snapshot",
]

MAX_ARMS = 1_000
MAX_SEGMENTS = 100_000
# Three float32 tables of this many cells stay under the 25 MiB KV value cap.
MAX_CELLS = 2_000_000
MAX_PAYLOAD_DEPTH = 32
MAX_INT = 2**63 - 1  # versions and timestamps must survive msgpack and SQL BIGINT
ALLOCATION_TOLERANCE = 1e-3
# Allocation cells are rounded to float32 when packed.
FLOAT32_SLACK = 1e-6

# Experiment, arm and segment keys: safe in KV keys, URLs, HTML attributes and logs.
KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")


def _check_key(what: str, value: object) -> str:
    if not isinstance(value, str) or not KEY_RE.fullmatch(value):
        raise SnapshotError(
            f"{what} {value!r}: must be 1-128 characters of letters, digits and "
            "'_.:-', starting with a letter or digit"
        )
    return value


def _check_json(where: str, value: object, depth: int = 0) -> None:
    if depth > MAX_PAYLOAD_DEPTH:
        raise SnapshotError(f"{where}: nested deeper than {MAX_PAYLOAD_DEPTH} levels")
    if isinstance(value, str):
        if not is_text(value):
            raise SnapshotError(f"{where}: string {value[:40]!r} is not UTF-8 text (lone surrogate or NUL)")
        return
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not isfinite(value):
            raise SnapshotError(f"{where}: {value} is not a JSON number")
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_json(where, item, depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not is_text(k):
                raise SnapshotError(f"{where}: object key {k!r} must be UTF-8 text without NUL")
            _check_json(where, item, depth + 1)
        return
    raise SnapshotError(f"{where}: {type(value).__name__} is not JSON-able")


@dataclass(frozen=True, slots=True)
class Arm:
    """A variant: its key, optional JSON-able config and optional HTML fragment."""

    key: str
    payload: Any = None
    html: str | None = None

    def __post_init__(self) -> None:
        _check_key("arm key", self.key)
        _check_json(f"arm {self.key!r}: payload", self.payload)
        if self.html is not None and not is_text(self.html):
            raise SnapshotError(
                f"arm {self.key!r}: html must be a string of UTF-8 text (no lone surrogate, no NUL)"
            )


@dataclass(frozen=True, slots=True)
class Segment:
    """A set of visitors defined by exact context feature values.

    ``parent`` is the index of the next less specific segment, used for
    fallback and by the learner for shrinkage; only segment 0, the global
    segment with no features, has none.
    """

    key: str
    features: Mapping[str, str] = field(default_factory=dict)
    parent: int | None = None

    def __post_init__(self) -> None:
        _check_key("segment key", self.key)
        if not isinstance(self.features, Mapping):
            raise SnapshotError(f"segment {self.key!r}: features must be a map")
        features = dict(self.features)
        for name, value in features.items():
            if not (isinstance(name, str) and name and is_text(name) and is_text(value)):
                raise SnapshotError(
                    f"segment {self.key!r}: feature {name!r}={value!r}, name and value must be "
                    "UTF-8 text without NUL and the name non-empty"
                )
        object.__setattr__(self, "features", features)
        if self.parent is not None and (isinstance(self.parent, bool) or not isinstance(self.parent, int)):
            raise SnapshotError(f"segment {self.key!r}: parent must be an index or none")


def _as_table(name: str, values: Iterable[float], cells: int) -> array[float]:
    try:
        # Always a private copy: a caller mutating its list later must not
        # change a snapshot that was already validated.
        if isinstance(values, array) and values.typecode == "f":
            table = array("f", values.tobytes())
        else:
            table = array("f", values)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SnapshotError(f"{name}: must be a sequence of floats ({exc})") from None
    if len(table) != cells:
        raise SnapshotError(f"{name}: {len(table)} values, must be arms x segments = {cells}")
    return table


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything an edge needs to decide one experiment, as of one version."""

    experiment: str
    version: int
    created_at: int  # ms since the Unix epoch
    max_age_s: float
    salt: str
    default_arm: str
    holdout: float
    floor: float
    arms: Sequence[Arm]
    segments: Sequence[Segment]
    alpha: Sequence[float]
    beta: Sequence[float]
    allocation: Sequence[float]
    hash_version: int = 1
    # Context features the edge reports with each exposure, so the learner can
    # grow segments it has not published yet (all of the experiment's features).
    context_features: Sequence[str] = ()
    # Schema 2: a contextual model decides instead of the segments' Beta tables, which then
    # describe the arms overall (segment 0 only) for reports and the allocation summary.
    model: ContextualModel | None = None
    # Schema 3: a ranked decision point (core.ranking): its arms are candidate items, k are shown.
    ranking: Ranking | None = None
    # Derived at construction: arm key -> index, and the segment lookup.
    arm_index: Mapping[str, int] = field(init=False, repr=False, compare=False)
    _lookup: tuple[tuple[tuple[str, ...], dict[tuple[str, ...], int]], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        _check_key("experiment key", self.experiment)
        for name in ("version", "created_at", "hash_version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
                raise SnapshotError(f"{name}={value!r}, must be an integer in [0, 2**63)")
        if self.hash_version not in SUPPORTED_HASH_VERSIONS:
            raise SnapshotError(
                f"hash_version={self.hash_version}, must be one of {sorted(SUPPORTED_HASH_VERSIONS)}"
            )
        if not is_text(self.salt):
            raise SnapshotError("salt must be UTF-8 text without NUL characters")
        self._check_number("max_age_s", self.max_age_s, 0.0, None, low_open=True)
        self._check_number("holdout", self.holdout, 0.0, 1.0, high_open=True)
        self._check_number("floor", self.floor, 0.0, 1.0)
        arms = tuple(self.arms)
        segments = tuple(self.segments)
        if not 1 <= len(arms) <= MAX_ARMS:
            raise SnapshotError(f"{len(arms)} arms, must be between 1 and {MAX_ARMS}")
        if not 1 <= len(segments) <= MAX_SEGMENTS:
            raise SnapshotError(f"{len(segments)} segments, must be between 1 and {MAX_SEGMENTS}")
        if len(arms) * len(segments) > MAX_CELLS:
            raise SnapshotError(f"{len(arms)} arms x {len(segments)} segments exceeds {MAX_CELLS} cells")
        for item in arms:
            if not isinstance(item, Arm):
                raise SnapshotError(f"arms must be Arm values, got {type(item).__name__}")
        for seg in segments:
            if not isinstance(seg, Segment):
                raise SnapshotError(f"segments must be Segment values, got {type(seg).__name__}")
        arm_index = {a.key: i for i, a in enumerate(arms)}
        if len(arm_index) != len(arms):
            raise SnapshotError("arm keys must be unique")
        if self.default_arm not in arm_index:
            raise SnapshotError(f"default arm {self.default_arm!r} is not one of the arms")
        reported = tuple(self.context_features)
        if len(reported) > 16 or not all(is_text(f) and 0 < len(f) <= 64 for f in reported):
            raise SnapshotError(f"context_features {list(reported)!r}: at most 16 names of 1-64 characters")
        object.__setattr__(self, "context_features", reported)
        self._check_model(len(arms), reported)
        if self.ranking is not None:
            if not isinstance(self.ranking, Ranking):
                raise SnapshotError(f"ranking must be a Ranking, got {type(self.ranking).__name__}")
            object.__setattr__(self, "ranking", self.ranking.check(len(arms), len(segments)))
        object.__setattr__(self, "arms", arms)
        object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "arm_index", arm_index)
        object.__setattr__(self, "_lookup", _segment_lookup(segments))
        cells = len(arms) * len(segments)
        for name in ("alpha", "beta", "allocation"):
            object.__setattr__(self, name, _as_table(name, getattr(self, name), cells))
        self._check_posteriors()
        self._check_allocation()

    def _check_model(self, arms: int, reported: tuple[str, ...]) -> None:
        if self.model is None:
            return
        if not isinstance(self.model, ContextualModel):
            raise SnapshotError(f"model must be a ContextualModel, got {type(self.model).__name__}")
        if self.model.arms != arms:
            raise SnapshotError(f"model has {self.model.arms} arms, the snapshot {arms}")
        unreported = [n for n in self.model.inputs if n not in reported]
        if unreported:
            raise SnapshotError(f"model reads {unreported}, which are not in context_features")

    @staticmethod
    def _check_number(
        name: str,
        value: object,
        low: float,
        high: float | None,
        *,
        low_open: bool = False,
        high_open: bool = False,
    ) -> None:
        try:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and isfinite(value)
        except OverflowError:  # an int too large for a float
            ok = False
        if ok:
            assert isinstance(value, (int, float))
            ok = (value > low if low_open else value >= low) and (
                high is None or (value < high if high_open else value <= high)
            )
        if not ok:
            lo = "(" if low_open else "["
            hi = "inf)" if high is None else (f"{high})" if high_open else f"{high}]")
            raise SnapshotError(f"{name}={value!r}, must be a number in {lo}{low}, {hi}")

    def _cell_name(self, index: int) -> str:
        a = len(self.arms)
        return f"arm {self.arms[index % a].key!r} in segment {self.segments[index // a].key!r}"

    def _check_posteriors(self) -> None:
        for name in ("alpha", "beta"):
            table = getattr(self, name)
            # sum() and min() run in C; the slow scan below only runs to name
            # the first offending cell once we know there is one.
            if isfinite(sum(table)) and min(table) > 0.0:
                continue
            for i, value in enumerate(table):
                if not (isfinite(value) and value > 0.0):
                    raise SnapshotError(f"{self._cell_name(i)}: {name}={value!r}, must be finite and > 0")

    def _check_allocation(self) -> None:
        table = self.allocation
        a = len(self.arms)
        # Every arm can be chosen (a Beta draw can always win, and the floor
        # explores uniformly), and its allocation is logged as the propensity
        # that off-policy evaluation divides by: so it must be > 0 and at
        # least the floor's share.
        low = max(self.floor / a - FLOAT32_SLACK, 0.0)
        if not (isfinite(sum(table)) and min(table) > low and max(table) <= 1.0):
            for i, value in enumerate(table):
                if not (isfinite(value) and low < value <= 1.0):
                    raise SnapshotError(
                        f"{self._cell_name(i)}: allocation={value!r}, "
                        f"must be in (floor/arms, 1] = ({low:.6g}, 1]"
                    )
        for s, segment in enumerate(self.segments):
            total = sum(table[s * a : (s + 1) * a])
            if abs(total - 1.0) > ALLOCATION_TOLERANCE:
                raise SnapshotError(
                    f"segment {segment.key!r}: allocation sums to {total:.6f}, "
                    f"must be 1 +/- {ALLOCATION_TOLERANCE}"
                )

    @property
    def feature_names(self) -> frozenset[str]:
        """The context features any segment of this snapshot looks at."""
        return frozenset(name for shape, _ in self._lookup for name in shape)

    def segment_for(self, context: Mapping[str, str]) -> int:
        """Index of the most specific segment matching ``context``.

        Shapes (sets of feature names) are tried from most to least specific,
        so a context that misses a leaf segment falls back to its parent and
        finally to the global segment 0.  Between equally specific shapes the
        one whose first segment comes first in the snapshot wins.
        """
        for names, table in self._lookup:
            try:
                values = tuple([context[n] for n in names])
                index = table.get(values)
            except (KeyError, TypeError):  # feature absent, or a value that is no string
                continue
            if index is not None:
                return index
        return 0


def _segment_lookup(
    segments: tuple[Segment, ...],
) -> tuple[tuple[tuple[str, ...], dict[tuple[str, ...], int]], ...]:
    root = segments[0]
    if root.features or root.parent is not None:
        raise SnapshotError(
            f"segment {root.key!r}: segment 0 must be the global segment (no features, no parent)"
        )
    seen: set[str] = set()
    shapes: dict[tuple[str, ...], dict[tuple[str, ...], int]] = {}
    for i, seg in enumerate(segments):
        if seg.key in seen:
            raise SnapshotError(f"segment {seg.key!r}: segment keys must be unique")
        seen.add(seg.key)
        if i == 0:
            continue
        if seg.parent is None or not 0 <= seg.parent < i:
            raise SnapshotError(
                f"segment {seg.key!r}: parent={seg.parent!r}, must be the index of an earlier segment"
            )
        parent = segments[seg.parent].features
        if len(parent) >= len(seg.features) or not parent.items() <= seg.features.items():
            raise SnapshotError(
                f"segment {seg.key!r}: its parent {segments[seg.parent].key!r} must match a "
                "strict subset of its features"
            )
        names = tuple(sorted(seg.features))
        values = tuple([seg.features[n] for n in names])
        table = shapes.get(names)
        if table is None:
            table = shapes[names] = {}
        if values in table:
            raise SnapshotError(
                f"segment {seg.key!r}: same features as segment {segments[table[values]].key!r}"
            )
        table[values] = i
    # dicts keep insertion order, and sorted() is stable: equally specific
    # shapes keep the order in which the snapshot first used them.
    ordered = sorted(shapes.items(), key=lambda item: -len(item[0]))
    return tuple(ordered)
