"""core.events: the event schema shared by the edge and the control plane."""

from __future__ import annotations

import pytest

from core import Decision, EventError, encode_batch, exposure_event, parse_batch, parse_beacon


def _decision() -> Decision:
    return Decision("hero", "b", None, None, 0.5, "personalized", "all", 3, 1.0, "a" * 32)


# --- hostile input (security review H1 and its low findings) --------------------------------------


def test_one_unusable_event_costs_only_itself() -> None:
    good = exposure_event(_decision(), "u-1", 1000, {"device": "mobile"})
    bad_text = {**good, "id": "x-2", "context": {"device": "\ud800"}}
    bad_nul = {**good, "id": "x-3", "unit": "u\x00"}
    bad_version = {**good, "id": "x-4", "snapshot_version": 2**63}
    bad_value = {
        "type": "outcome",
        "id": "o-1",
        "ts": 1,
        "decision_id": "a" * 32,
        "experiment": "e",
        "value": 10**400,
    }
    valid, rejected = parse_batch(encode_batch([good, bad_text, bad_nul, bad_version, bad_value]))
    assert [e["id"] for e in valid] == [good["id"]]
    assert [r["index"] for r in rejected] == [1, 2, 3, 4]
    assert "without NUL" in rejected[0]["error"] and "64-bit" in rejected[2]["error"]


@pytest.mark.parametrize(
    "body",
    [b"[" * 10_000 + b"]" * 10_000, b'{"schema": 1, "events": ' + b"9" * 5000 + b"}", b"\xed\xa0\x80"],
)
def test_hostile_batches_and_beacons_are_event_errors(body: bytes) -> None:
    with pytest.raises(EventError, match="body must be JSON"):
        parse_batch(body)
    with pytest.raises(EventError, match="body must be JSON"):
        parse_beacon(body, 1, (None,), secret="s", max_age_ms=1000)
