"""core.signals: a browser's behavioural signals, checked item by item."""

from __future__ import annotations

import json

import pytest

from core import SignalError, parse_signals, signal_event
from core.events import validate_event

TAG = "0123456789abcdef"


def beacon(*items: object) -> bytes:
    return json.dumps({"schema": 1, "signals": list(items)}).encode()


def test_good_items_become_signed_batch_events_for_the_given_visitor() -> None:
    events, rejected = parse_signals(
        beacon({"kind": "page_view", "category": "running-shoes"}, {"kind": "purchase", "value": 120}),
        "u-1",
        TAG,
        1000,
    )
    assert rejected == []
    assert [(e["kind"], e["unit"], e["tag"], e["ts"]) for e in events] == [
        ("page_view", "u-1", TAG, 1000),
        ("purchase", "u-1", TAG, 1000),
    ]
    for event in events:  # what the control plane's batch schema accepts
        assert validate_event(event, "e") is event


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("page_view", "expected an object"),
        ({"kind": ["page_view"]}, "kind: expected one of"),
        ({"kind": "page_view", "category": "Running Shoes"}, "category: expected null or 1-64 of lowercase"),
        ({"kind": "search", "name": ""}, "name: expected null or 1-64"),
        ({"kind": "purchase", "value": float("inf")}, "value: expected null or a finite number"),
        ({"kind": "time_on_page", "value": 100_000}, "seconds on the page, within [0, 86400]"),
        ({"kind": "custom"}, "a custom signal needs a name"),
        ({"kind": "page_view", "id": "x" * 65}, "id: expected null or 1-64"),
    ],
)
def test_each_bad_item_is_refused_alone_with_the_rule_it_broke(item: object, message: str) -> None:
    events, rejected = parse_signals(beacon({"kind": "page_view"}, item), "u-1", TAG, 1000)
    assert len(events) == 1
    (refused,) = rejected
    assert refused["index"] == 1 and message in refused["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[", "body must be JSON"),
        (json.dumps({"schema": 2, "signals": []}).encode(), '"schema": 1'),
        (beacon(), "1 to 50"),
        (beacon(*[{"kind": "page_view"}] * 51), "1 to 50"),
    ],
)
def test_a_body_that_is_no_beacon_is_a_signal_error(body: bytes, message: str) -> None:
    with pytest.raises(SignalError, match=message):
        parse_signals(body, "u-1", TAG, 1000)


def test_ids_are_stable_for_retries_and_distinct_otherwise() -> None:
    a = signal_event("u-1", TAG, "custom", 1000, name="x", client_id="c-1")
    assert a["id"] == signal_event("u-1", TAG, "custom", 9999, name="x", client_id="c-1")["id"]
    assert a["id"] != signal_event("u-2", TAG, "custom", 1000, name="x", client_id="c-1")["id"]
    assert signal_event("u-1", TAG, "page_view", 1) != signal_event("u-1", TAG, "page_view", 2)
