"""The events the edge sends home, and validation of browser beacons.

Shared by the edge (which builds and signs batches) and the control plane
(which validates and stores them), so both agree on one schema:

``{"schema": 1, "events": [event, ...]}`` with events of three types, each
carrying an ``id`` the control plane deduplicates on:

* ``exposure`` — a decision was shown: ``decision_id, experiment, arm, unit
  (null without consent), propensity, reason, segment, snapshot_version,
  context`` (the experiment's segment features; empty without consent);
* ``outcome`` — a reward for a decision: ``decision_id, experiment, value,
  unit`` (from a browser beacon only with the decision's signed token, see
  :mod:`core.tokens`);
* ``stitch`` — an anonymous id became a known user: ``anonymous_id, user_id``;
* ``signal`` — something a visitor did, for their profile: ``unit, tag, kind, category, value,
  name`` (:mod:`core.signals`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import reprlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from core.decide import REASONS, Decision
from core.errors import PerchError
from core.signals import SIGNAL_RULES
from core.snapshot import KEY_RE
from core.text import INT64_MAX, JSONInputError, is_int64, is_text, may_hold_non_text, parse_json
from core.tokens import MAX_TOKEN_CHARS, DecisionToken, TokenError, read_token

__all__ = [
    "EVENT_SCHEMA",
    "MAX_BATCH_EVENTS",
    "MAX_BEACON_EVENTS",
    "EventError",
    "encode_batch",
    "exposure_event",
    "outcome_event",
    "parse_batch",
    "parse_beacon",
    "RULES",
    "Rule",
    "stitch_event",
    "validate_event",
]

EVENT_SCHEMA = 1
MAX_BEACON_EVENTS = 100
MAX_ABS_VALUE = 1e12

_DECISION_ID = re.compile(r"[0-9a-f]{32}")
_EVENT_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


class EventError(PerchError, ValueError):
    """An event or beacon breaks the schema; the message says what was expected."""


def _bounded_number(value: object) -> bool:
    """A finite int or float within +/-MAX_ABS_VALUE (a huge int must not reach float())."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return abs(value) <= MAX_ABS_VALUE
    return math.isfinite(value) and abs(value) <= MAX_ABS_VALUE


def exposure_event(
    decision: Decision, unit: str | None, ts_ms: int, context: dict[str, str] | None = None
) -> dict[str, Any]:
    """``context`` holds the experiment's segment features as the edge saw them."""
    return {
        "type": "exposure",
        "id": f"x-{decision.decision_id}",
        "ts": ts_ms,
        "decision_id": decision.decision_id,
        "experiment": decision.experiment,
        "arm": decision.arm,
        "unit": unit,
        "propensity": decision.propensity,
        "reason": decision.reason,
        "segment": decision.segment,
        "snapshot_version": decision.snapshot_version,
        "context": context or {},
    }


def outcome_event(
    decision_id: str,
    experiment: str,
    value: float,
    *,
    ts_ms: int,
    unit: str | None,
    event_id: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """``token``, the decision's, lets the control plane credit the outcome without the exposure."""
    if event_id is None:
        # A retried beacon carries the same (decision, value): same id, one row.
        digest = hashlib.sha256(f"{decision_id}|{experiment}|{value!r}".encode()).hexdigest()[:24]
        event_id = f"o-{digest}"
    event = {
        "type": "outcome",
        "id": event_id,
        "ts": ts_ms,
        "decision_id": decision_id,
        "experiment": experiment,
        "value": value,
        "unit": unit,
    }
    if token is not None:
        event["token"] = token
    return event


def stitch_event(anonymous_id: str, user_id: str, ts_ms: int) -> dict[str, Any]:
    digest = hashlib.sha256(f"{anonymous_id}|{user_id}".encode()).hexdigest()[:24]
    return {
        "type": "stitch",
        "id": f"s-{digest}",
        "ts": ts_ms,
        "anonymous_id": anonymous_id,
        "user_id": user_id,
    }


def encode_batch(events: Sequence[dict[str, Any]]) -> bytes:
    return json.dumps({"schema": EVENT_SCHEMA, "events": list(events)}, separators=(",", ":")).encode()


def _beacon_item(
    item: object, where: str, *, secret: str, now_ms: int, max_age_ms: int, units: Sequence[str | None]
) -> tuple[DecisionToken, str | None, float, str | None]:
    if not isinstance(item, dict):
        raise EventError(f"{where}: expected an object with the decision's token and a value")
    if "token" not in item:
        raise EventError(
            f"{where}: token is required: the decision's token from /v1/decide or data-perch-token"
        )
    try:
        token, unit = read_token(secret, item["token"], now_ms=now_ms, max_age_ms=max_age_ms, units=units)
    except TokenError as exc:
        raise EventError(f"{where}: {exc}") from None
    _check(item, _BEACON_RULES, where)
    return token, unit, float(item.get("value", 1)), item.get("id")


def parse_beacon(
    body: bytes, ts_ms: int, units: Sequence[str | None], *, secret: str, max_age_ms: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Outcome events from a browser beacon (one object, or ``{"events": [...]}``), and the refused items.

    Each item carries the decision's token; it is credited only if the token is ours, fresh
    (``max_age_ms``) and minted for one of this visitor's ``units`` (their anonymous id and, once
    signed in, their user id); the outcome is filed under that unit. The decision id and experiment come
    from the token, never from the browser. A malformed body is an :class:`EventError`.
    """
    try:
        doc = parse_json(body)
    except JSONInputError as exc:
        raise EventError(f'body must be JSON {{"token", "value"}} or {{"events": [...]}} ({exc})') from None
    items = doc.get("events") if isinstance(doc, dict) and "events" in doc else [doc]
    if not isinstance(items, list) or not items:
        raise EventError("'events' must be a non-empty list of outcome objects")
    if len(items) > MAX_BEACON_EVENTS:
        raise EventError(f"{len(items)} events, at most {MAX_BEACON_EVENTS} per beacon")
    events, rejected = [], []
    for i, item in enumerate(items):
        try:
            token, unit, value, event_id = _beacon_item(
                item, f"events[{i}]", secret=secret, now_ms=ts_ms, max_age_ms=max_age_ms, units=units
            )
        except EventError as exc:
            rejected.append({"index": i, "error": str(exc)})
            continue
        events.append(
            outcome_event(
                token.decision_id,
                token.experiment,
                value,
                ts_ms=ts_ms,
                unit=unit,
                event_id=event_id,
                token=item["token"],
            )
        )
    return events, rejected


MAX_BATCH_EVENTS = 5000
_HEX32 = _DECISION_ID


# Quoting what a client sent, briefly: bounded in depth and length however large or deep it is.
_QUOTE = reprlib.Repr()  # keyword arguments only from Python 3.12
_QUOTE.maxlevel, _QUOTE.maxstring, _QUOTE.maxlong, _QUOTE.maxother = 3, 60, 40, 60


class Rule(NamedTuple):
    """One field's rule: the check its value must pass, and what the message says was expected."""

    name: str
    check: Callable[[Any], bool]
    expected: str
    missing: object = None  # what an absent field counts as


def _optional_text(value: object, limit: int = 256) -> bool:
    return value is None or (isinstance(value, str) and 0 < len(value) <= limit and is_text(value))


def _matches(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and pattern.fullmatch(value) is not None


def _context(ctx: object) -> bool:
    return (
        isinstance(ctx, dict)
        and len(ctx) <= 16
        and all(
            isinstance(k, str)
            and isinstance(v, str)
            and 0 < len(k) <= 64
            and len(v) <= 128
            and is_text(k)
            and is_text(v)
            for k, v in ctx.items()
        )
    )


def _token(token: object) -> bool:
    return token is None or (isinstance(token, str) and 0 < len(token) <= MAX_TOKEN_CHARS and token.isascii())


_ID_RULE = Rule("id", _matches(_EVENT_ID), "1-128 characters of letters, digits and '_.:-'")
_COMMON = (_ID_RULE, Rule("ts", lambda ts: is_int64(ts) and ts >= 0, "an integer timestamp in ms"))
_DECIDED = (
    Rule("decision_id", _matches(_DECISION_ID), "32 lowercase hex characters"),
    Rule("experiment", _matches(KEY_RE), "an experiment key"),
    Rule("unit", _optional_text, "a unit id or null"),
)
_VALUE_RULE = Rule("value", _bounded_number, f"a finite number within +/-{MAX_ABS_VALUE:g}")
# The schema of each event type, checked in this order; the message names the first rule broken.
RULES: dict[str, tuple[Rule, ...]] = {
    "exposure": (
        *_DECIDED,
        Rule("arm", _matches(KEY_RE), "an arm key"),
        Rule("reason", lambda reason: reason in REASONS, f"one of {REASONS}"),
        Rule(
            "propensity",
            lambda p: p is None or (_bounded_number(p) and 0.0 < p <= 1.0),
            "a number in (0, 1] or null",
        ),
        Rule("segment", lambda segment: _optional_text(segment, 128), "a segment key or null"),
        Rule("snapshot_version", lambda v: v is None or is_int64(v), "a 64-bit integer or null"),
        Rule(
            "context",
            _context,
            "an object of at most 16 features, names and values UTF-8 text without NUL",
            missing={},
        ),
    ),
    "outcome": (*_DECIDED, Rule("token", _token, "the decision's token string or null"), _VALUE_RULE),
    "stitch": (
        Rule("anonymous_id", lambda v: v is not None and _optional_text(v), "an id"),
        Rule("user_id", lambda v: v is not None and _optional_text(v), "an id"),
    ),
    "signal": tuple(Rule(name, check, expected) for name, check, expected in SIGNAL_RULES),
}

# A beacon item's own fields (its token is read first: it names the decision).
_BEACON_RULES = (
    Rule("value", _bounded_number, f"a finite number within +/-{MAX_ABS_VALUE:g}", missing=1),
    Rule("id", lambda i: i is None or _ID_RULE.check(i), f"null or {_ID_RULE.expected}"),
)


def _check(item: dict[str, Any], rules: Sequence[Rule], where: str) -> None:
    for rule in rules:
        value = item.get(rule.name, rule.missing)
        if not rule.check(value):
            raise EventError(f"{where}.{rule.name}: expected {rule.expected}, got {_QUOTE.repr(value)}"[:300])


def _text(value: object, limit: int, clean: bool) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit and (clean or is_text(value))


def _valid_fast(event: dict[str, Any], clean: bool) -> bool:
    """True if ``event`` is a well-formed exposure or outcome: the common case in one expression.

    Exactly the rules :func:`validate_event` states one by one (it runs when this says False, to
    name the first rule broken). ``clean``: the body had no escape that can make a string that is
    not text, so every string is text. At 30,000 events/s the per-rule calls showed.
    """
    kind = event.get("type")
    event_id, ts, decision_id, experiment = (
        event.get("id"),
        event.get("ts"),
        event.get("decision_id"),
        event.get("experiment"),
    )
    unit = event.get("unit")
    common = (
        isinstance(event_id, str)
        and _EVENT_ID.fullmatch(event_id) is not None
        and type(ts) is int
        and 0 <= ts <= INT64_MAX
        and isinstance(decision_id, str)
        and _HEX32.fullmatch(decision_id) is not None
        and isinstance(experiment, str)
        and KEY_RE.fullmatch(experiment) is not None
        and (unit is None or _text(unit, 256, clean))
    )
    if not common:
        return False
    if kind == "exposure":
        arm, p, segment, version = (
            event.get("arm"),
            event.get("propensity"),
            event.get("segment"),
            event.get("snapshot_version"),
        )
        ctx = event.get("context", {})
        return (
            isinstance(arm, str)
            and KEY_RE.fullmatch(arm) is not None
            and event.get("reason") in REASONS
            and (p is None or (_bounded_number(p) and 0.0 < p <= 1.0))
            and (segment is None or _text(segment, 128, clean))
            and (version is None or is_int64(version))
            and isinstance(ctx, dict)
            and len(ctx) <= 16
            and all(
                _text(k, 64, clean) and isinstance(v, str) and len(v) <= 128 and (clean or is_text(v))
                for k, v in ctx.items()
            )
        )
    if kind == "outcome":
        return _token(event.get("token")) and _bounded_number(event.get("value"))
    return False


def validate_event(event: object, where: str, *, clean: bool = False) -> dict[str, Any]:
    """One event of a batch, checked against its type's schema (:data:`RULES`).

    ``clean``: the body it came in holds no ``\\u`` escape of a NUL or a surrogate (see
    :func:`parse_batch`), so its strings need no text check.
    """
    if not isinstance(event, dict):
        raise EventError(f"{where}: expected an event object")
    if _valid_fast(event, clean):
        return event
    _check(event, _COMMON, where)
    kind = event.get("type")
    rules = RULES.get(kind) if isinstance(kind, str) else None
    if rules is None:
        raise EventError(f"{where}.type: expected one of {sorted(RULES)}, got {kind!r}"[:300])
    _check(event, rules, where)
    return event


def parse_batch(body: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A batch's valid events, and ``{"index", "error"}`` for each invalid one.

    The batch as a whole must be well-formed (else :class:`EventError`); one bad
    event does not cost the others their place.
    """
    try:
        # Text is checked per event by validate_event: one bad string costs only its own event.
        doc = parse_json(body, check_text=False)
    except JSONInputError as exc:
        raise EventError(f'body must be JSON {{"schema": {EVENT_SCHEMA}, "events": [...]}} ({exc})') from None
    if (
        not isinstance(doc, dict)
        or doc.get("schema") != EVENT_SCHEMA
        or not isinstance(doc.get("events"), list)
    ):
        raise EventError(f'body must be {{"schema": {EVENT_SCHEMA}, "events": [...]}}')
    events = doc["events"]
    if len(events) > MAX_BATCH_EVENTS:
        raise EventError(f"{len(events)} events, at most {MAX_BATCH_EVENTS} per batch")
    clean = not may_hold_non_text(body)  # then the per-string text checks can be skipped
    valid, rejected = [], []
    for i, event in enumerate(events):
        if isinstance(event, dict) and _valid_fast(event, clean):
            valid.append(event)
            continue
        try:
            valid.append(validate_event(event, f"events[{i}]"))
        except EventError as exc:
            rejected.append({"index": i, "error": str(exc)})
    return valid, rejected
