"""core.tokens: decision tokens minted at the edge and checked when the outcome comes back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import DecisionToken, TokenError, mint_token, read_token, unit_tag
from core.tokens import CLOCK_SKEW_MS, MAX_TOKEN_CHARS

SECRET = "edge-secret-0123456789"
NOW = 1_800_000_000_000
DAY = 86_400_000


def _token(unit: str | None = "u-1", **overrides: object) -> DecisionToken:
    fields: dict[str, object] = {
        "decision_id": "ab" * 16,
        "experiment": "hero",
        "arm": "b",
        "cell": {"device": "mobile", "source": "café"},
        "ts_ms": NOW,
        "snapshot_version": 7,
        "unit_tag": unit_tag(SECRET, unit),
    }
    fields.update(overrides)
    return DecisionToken(**fields)  # type: ignore[arg-type]


def _read(raw: object, unit: str | None = "u-1", now: int = NOW + 1000) -> DecisionToken:
    token, matched = read_token(SECRET, raw, now_ms=now, max_age_ms=DAY, units=(unit,))
    assert matched == unit
    return token


def test_round_trip_and_safe_in_html_and_urls() -> None:
    raw = mint_token(SECRET, _token())
    assert _read(raw) == _token()
    assert raw.isascii() and not set(raw) & set("\"'<>& /?#=+")
    assert len(raw) < 300


def test_unit_tags_identify_without_revealing() -> None:
    assert unit_tag(SECRET, "u-1") == unit_tag(SECRET, "u-1") != unit_tag(SECRET, "u-2")
    assert unit_tag(SECRET, None) == "" and "u-1" not in unit_tag(SECRET, "u-1")
    assert unit_tag("other-secret", "u-1") != unit_tag(SECRET, "u-1")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: raw, None),
        (lambda raw: raw[:-1] + ("0" if raw[-1] != "0" else "1"), "does not match"),
        (lambda raw: "t2" + raw[2:], "not a Perch decision token"),
        (lambda raw: raw.replace(".", "", 1), "not a Perch decision token"),
        (lambda raw: raw + "x" * MAX_TOKEN_CHARS, "at most"),
        (lambda raw: 42, "must be the decision's token"),
        (lambda raw: "t1." + "é" * 10 + "." + "0" * 32, "must be the decision's token"),
    ],
)
def test_tampering_is_refused(mutate: object, message: str | None) -> None:
    raw = mint_token(SECRET, _token())
    if message is None:
        assert _read(mutate(raw)) == _token()  # type: ignore[operator]
        return
    with pytest.raises(TokenError, match=message):
        _read(mutate(raw))  # type: ignore[operator]


def test_another_visitor_or_another_deployment_cannot_use_it() -> None:
    raw = mint_token(SECRET, _token())
    with pytest.raises(TokenError, match="another visitor"):
        _read(raw, unit="u-2")
    with pytest.raises(TokenError, match="another visitor"):
        _read(raw, unit=None)
    with pytest.raises(TokenError, match="does not match"):
        read_token("another-secret-000000", raw, now_ms=NOW, max_age_ms=DAY, units=("u-1",))
    assert _read(mint_token(SECRET, _token(None)), unit=None).unit_tag == ""


def test_freshness_with_a_little_clock_skew() -> None:
    raw = mint_token(SECRET, _token())
    assert _read(raw, now=NOW - CLOCK_SKEW_MS) == _token()
    assert _read(raw, now=NOW + DAY) == _token()
    for now in (NOW - CLOCK_SKEW_MS - 1, NOW + DAY + 1):
        with pytest.raises(TokenError, match="outside"):
            _read(raw, now=now)


@given(st.text(max_size=300))
def test_any_string_is_a_token_error_or_a_token(raw: str) -> None:
    # Anything else escaping (ValueError, RecursionError, UnicodeError...) fails the test.
    try:
        result = _read(raw)
    except TokenError:
        return
    assert isinstance(result, DecisionToken)


def test_a_visitor_who_signed_in_since_still_holds_their_anonymous_decisions() -> None:
    raw = mint_token(SECRET, _token("anon-1"))
    token, matched = read_token(SECRET, raw, now_ms=NOW, max_age_ms=DAY, units=("user-7", "anon-1"))
    assert (token, matched) == (_token("anon-1"), "anon-1")
    with pytest.raises(TokenError, match="another visitor"):
        read_token(SECRET, raw, now_ms=NOW, max_age_ms=DAY, units=("user-7", "anon-2"))


def test_a_token_names_its_decisions_reason_and_older_tokens_still_verify() -> None:
    import base64
    import hashlib
    import hmac
    import json

    from core import verify_token

    raw = mint_token(SECRET, _token(reason="personalized"))
    assert verify_token(SECRET, raw).reason == "personalized"
    # A token minted before the reason was added: 7 fields, same MAC scheme.
    doc = ["ab" * 16, "hero", "b", {}, NOW, 7, ""]
    payload = base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    mac = hmac.new(SECRET.encode(), b"perch-decision-v1\x00" + payload.encode(), hashlib.sha256).hexdigest()
    old = verify_token(SECRET, f"t1.{payload}.{mac[:32]}")
    assert (old.decision_id, old.reason) == ("ab" * 16, "")
    with pytest.raises(TokenError, match="wrong kind"):
        verify_token(SECRET, mint_token(SECRET, _token(reason="because")))
    with pytest.raises(TokenError, match="signature"):
        verify_token("another-secret-000000", raw)
