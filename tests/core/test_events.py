"""core.events: the event schema shared by the edge and the control plane."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import Decision, EventError, encode_batch, events, exposure_event, parse_batch, parse_beacon
from core.events import validate_event


def _decision() -> Decision:
    return Decision(
        experiment="hero",
        arm="b",
        payload=None,
        html=None,
        propensity=0.5,
        reason="personalized",
        segment="all",
        snapshot_version=3,
        snapshot_age_s=1.0,
        decision_id="a" * 32,
    )


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


# --- the schema table: one rule per field, and the fast path agrees with it -----------------------

_VALID = {
    "exposure": {
        "type": "exposure",
        "id": "x-1",
        "ts": 1000,
        "decision_id": "a" * 32,
        "experiment": "hero",
        "arm": "b",
        "unit": "u-1",
        "propensity": 0.5,
        "reason": "personalized",
        "segment": "all",
        "snapshot_version": 3,
        "context": {"device": "mobile"},
    },
    "outcome": {
        "type": "outcome",
        "id": "o-1",
        "ts": 1000,
        "decision_id": "a" * 32,
        "experiment": "hero",
        "unit": None,
        "value": 1,
    },
    "stitch": {"type": "stitch", "id": "s-1", "ts": 1000, "anonymous_id": "anon", "user_id": "user"},
    "signal": {
        "type": "signal",
        "id": "g-1",
        "ts": 1000,
        "unit": "u-1",
        "tag": "0123456789abcdef",
        "kind": "page_view",
        "category": "running-shoes",
    },
}
# Values that break one rule or another; each rule is tested with the first of these it refuses.
_BAD = [None, "", 12, -1, 2**70, 1.5, "\ud800", "u\x00", "x" * 300, ["list"], {"k": 1}, {"\ud800": "v"}]


def _broken(kind: str) -> list[tuple[str, dict[str, object], str]]:
    out = []
    for rule in (*events._COMMON, *events.RULES[kind]):
        bad = next(v for v in _BAD if not rule.check(v))
        out.append((rule.name, {**_VALID[kind], rule.name: bad}, rule.expected))
    return out


@pytest.mark.parametrize("kind", sorted(events.RULES))
def test_each_rule_names_its_field_and_what_was_expected(kind: str) -> None:
    assert validate_event(_VALID[kind], "e") is _VALID[kind]
    for name, event, expected in _broken(kind):
        with pytest.raises(EventError) as refused:
            validate_event(event, "events[7]")
        assert str(refused.value).startswith(f"events[7].{name}: expected {expected}"[:300]), name
        assert not events._valid_fast(event, False), name


_VALUES = st.sampled_from([*_BAD, "x-9", "b", "hero", "a" * 32, 0, 1, 0.25, "personalized", "holdout", {}])


@settings(max_examples=300)
@given(
    kind=st.sampled_from(sorted(events.RULES)),
    changes=st.dictionaries(
        st.sampled_from(
            [
                "id",
                "ts",
                "decision_id",
                "experiment",
                "unit",
                "arm",
                "reason",
                "propensity",
                "segment",
                "snapshot_version",
                "context",
                "token",
                "value",
                "anonymous_id",
                "user_id",
                "tag",
                "kind",
                "category",
                "name",
            ]
        ),
        _VALUES,
        max_size=3,
    ),
)
def test_the_fast_path_accepts_exactly_what_the_rules_accept(kind: str, changes: dict[str, object]) -> None:
    # The fast path is a hand-inlined copy of RULES for exposures and outcomes (speed); it must never
    # accept what the table refuses, nor refuse what it accepts.
    event = {**_VALID[kind], **changes}
    try:
        events._check(event, (*events._COMMON, *events.RULES[kind]), "e")
        table_ok = True
    except EventError:
        table_ok = False
    if kind in ("stitch", "signal"):  # no fast path: they take the table's
        assert not events._valid_fast(event, False)
    else:
        assert events._valid_fast(event, False) == table_ok
