"""core.profile: the KV value the edge hydrates, and its trust boundary."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import (
    MAX_PROFILE_BYTES,
    Profile,
    ProfileError,
    decode_profile,
    encode_profile,
    is_sensitive,
    profile_key,
)

RUNNER = Profile(
    features={"interest": "running", "ltv": "high"},
    because={"interest": "you viewed running shoes"},
    updated_ms=5,
)


def test_a_profile_round_trips_and_reads_as_profile_context() -> None:
    assert decode_profile(encode_profile(RUNNER)) == RUNNER
    assert RUNNER.context() == {"profile.interest": "running", "profile.ltv": "high"}
    assert profile_key("0123456789abcdef") == "perch:profile:0123456789abcdef"


def test_sensitive_attributes_never_become_context() -> None:
    held = Profile(features={"interest": "running", "household_income": "high", "health_status": "x"})
    assert held.context() == {"profile.interest": "running"}
    assert is_sensitive("relationship_status") and is_sensitive("Religion") and not is_sensitive("plan")
    for variant in ("religious", "politics", "disabled", "ethnic_origin", "married", "diagnosis", "gender"):
        assert is_sensitive(variant), variant


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": {"Bad-Name": "x"}}, "names are 1-32 of a-z"),
        ({"features": {"plan": ""}}, "expected a value of 1-64"),
        ({"features": {f"f{i}": "x" for i in range(25)}}, "at most 24"),
        ({"features": {"plan": "pro"}, "because": {"other": "x"}}, "names no feature"),
        ({"updated_ms": -1}, "expected a timestamp"),
    ],
)
def test_each_rule_is_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        Profile(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xc1", "not msgpack"),
        (b"x" * (MAX_PROFILE_BYTES + 1), "at most 4096"),
        (msgpack.packb({"schema": 2}), "schema 1"),
        (msgpack.packb([1, 2]), "not msgpack"),  # arrays are refused before they are built
        (msgpack.packb({"schema": 1, "features": {"a": 1}}), "expected a value"),
        (msgpack.packb({"schema": 1, "dnp": "yes"}), "dnp a boolean"),
        (msgpack.packb({"schema": 1, "features": {f"f{i}": "x" for i in range(40)}}), "not msgpack"),
    ],
)
def test_hostile_bytes_are_a_profile_error(raw: bytes, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        decode_profile(raw)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_profile_error(raw: bytes) -> None:
    # Any other exception (a TypeError on a map key, a MemoryError) would fail the edge's read.
    try:
        assert isinstance(decode_profile(raw), Profile)
    except ProfileError as exc:
        assert str(exc)
