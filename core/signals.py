"""Behavioural signals: what a page tells Perch about a visitor, for their profile (core.profile).

A first-party script the edge serves (``/v1/perch.js``) sends batches with ``sendBeacon`` to the
edge's ``POST /v1/signals``::

    {"schema": 1, "signals": [{"kind": "page_view", "category": "running-shoes"}, ...]}

Each item is checked on its own (a bad one is refused with the rule it broke, the others kept).
The browser names only what happened; who it happened to comes from the visitor's cookie at the
edge, and when from the edge's clock. The edge turns each item into a ``signal`` event of the
signed batch it sends home (schema in :data:`SIGNAL_RULES`), carrying the visitor's unit and its
profile tag (:func:`core.tokens.unit_tag`), which names the visitor's profile in KV.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from core.errors import PerchError
from core.text import JSONInputError, is_text, parse_json
from core.tokens import UNIT_TAG_RE

__all__ = [
    "CATEGORY_RE",
    "KINDS",
    "MAX_SIGNALS",
    "SIGNAL_RULES",
    "SIGNAL_SCHEMA",
    "SignalError",
    "parse_signals",
    "signal_event",
]

SIGNAL_SCHEMA = 1
MAX_SIGNALS = 50  # per beacon
# What each kind's ``value`` means, and its bounds.
KINDS: dict[str, tuple[str, float, float]] = {
    "page_view": ("unused", 0.0, 0.0),
    "time_on_page": ("seconds on the page", 0.0, 86_400.0),
    "scroll": ("deepest scroll, % of the page", 0.0, 100.0),
    "search": ("unused", 0.0, 0.0),
    "add_to_cart": ("the item's price", 0.0, 1e9),
    "purchase": ("the order's value", 0.0, 1e9),
    "custom": ("any number", -1e12, 1e12),
}
# A category as pages name it (also the session's interest, edge.session).
CATEGORY_RE = re.compile(r"[a-z0-9][a-z0-9 _\-/.&]{0,63}")
_CLIENT_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


class SignalError(PerchError, ValueError):
    """A signal beacon or item breaks the schema; the message says what was expected."""


class _Rule(NamedTuple):
    name: str
    check: Callable[[Any], bool]
    expected: str


def _category(value: object) -> bool:
    return value is None or (isinstance(value, str) and CATEGORY_RE.fullmatch(value) is not None)


def _name(value: object) -> bool:
    return value is None or (isinstance(value, str) and 0 < len(value) <= 64 and is_text(value))


def _number(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and abs(value) <= 1e12


# The browser's item, checked in this order (the first rule broken is named).
_ITEM_RULES = (
    _Rule("kind", lambda k: isinstance(k, str) and k in KINDS, f"one of {sorted(KINDS)}"),
    _Rule("category", _category, "null or 1-64 of lowercase a-z, 0-9 and ' _-/.&'"),
    _Rule("name", _name, "null or 1-64 characters of text"),
    _Rule("value", _number, "null or a finite number"),
    _Rule(
        "id",
        lambda i: i is None or (isinstance(i, str) and _CLIENT_ID.fullmatch(i) is not None),
        "null or 1-64 of letters, digits and '_.:-'",
    ),
)
# A ``signal`` event's own fields in the batch the edge signs (core.events.RULES adds id and ts).
SIGNAL_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("unit", lambda u: isinstance(u, str) and 0 < len(u) <= 256 and is_text(u), "the visitor's unit id"),
    (
        "tag",
        lambda t: isinstance(t, str) and UNIT_TAG_RE.fullmatch(t) is not None,
        "16 lowercase hex characters",
    ),
    *((r.name, r.check, r.expected) for r in _ITEM_RULES[:4]),
)


def _item(item: object, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise SignalError(f"{where}: expected an object with a kind")
    for rule in _ITEM_RULES:
        value = item.get(rule.name)
        if not rule.check(value):
            raise SignalError(f"{where}.{rule.name}: expected {rule.expected}, got {value!r}"[:300])
    kind = item["kind"]
    value = item.get("value")
    meaning, low, high = KINDS[kind]
    if value is not None and meaning != "unused" and not low <= value <= high:
        raise SignalError(f"{where}.value: {kind}'s value is {meaning}, within [{low:g}, {high:g}]")
    if kind == "custom" and item.get("name") is None:
        raise SignalError(f"{where}.name: a custom signal needs a name")
    return item


def signal_event(
    unit: str,
    tag: str,
    kind: str,
    ts_ms: int,
    *,
    category: str | None = None,
    value: float | None = None,
    name: str | None = None,
    client_id: str | None = None,
) -> dict[str, Any]:
    """A ``signal`` event of the batch the edge sends home. Its id is a hash: a retried beacon
    (same client id, or the same signal in the same millisecond) is stored once."""
    seed = f"{unit}|{client_id}" if client_id else f"{unit}|{kind}|{category}|{value!r}|{name}|{ts_ms}"
    event: dict[str, Any] = {
        "type": "signal",
        "id": "g-" + hashlib.sha256(seed.encode("utf-8", "replace")).hexdigest()[:24],
        "ts": ts_ms,
        "unit": unit,
        "tag": tag,
        "kind": kind,
    }
    for key, field in (("category", category), ("value", value), ("name", name)):
        if field is not None:
            event[key] = field
    return event


def parse_signals(
    body: bytes, unit: str, tag: str, ts_ms: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``signal`` events of a browser's beacon for the visitor ``unit``, and the refused items
    (``{"index", "error"}``). A body that is not a beacon at all is a :class:`SignalError`."""
    try:
        doc = parse_json(body)
    except JSONInputError as exc:
        raise SignalError(
            f'body must be JSON {{"schema": {SIGNAL_SCHEMA}, "signals": [...]}} ({exc})'
        ) from None
    if (
        not isinstance(doc, dict)
        or doc.get("schema") != SIGNAL_SCHEMA
        or not isinstance(doc.get("signals"), list)
    ):
        raise SignalError(f'body must be {{"schema": {SIGNAL_SCHEMA}, "signals": [...]}}')
    items = doc["signals"]
    if not 0 < len(items) <= MAX_SIGNALS:
        raise SignalError(f"{len(items)} signals: expected 1 to {MAX_SIGNALS} per beacon")
    events, rejected = [], []
    for i, item in enumerate(items):
        try:
            checked = _item(item, f"signals[{i}]")
        except SignalError as exc:
            rejected.append({"index": i, "error": str(exc)})
            continue
        events.append(
            signal_event(
                unit,
                tag,
                checked["kind"],
                ts_ms,
                category=checked.get("category"),
                value=checked.get("value"),
                name=checked.get("name"),
                client_id=checked.get("id"),
            )
        )
    return events, rejected
