"""core.kv: key layout and the published index of live experiments."""

from __future__ import annotations

import json

import pytest

from core import LiveIndexError, decode_index, encode_index, snapshot_key


def test_index_round_trip_sorted_and_deduplicated() -> None:
    raw = encode_index(["b", "a", "b"], 1234)
    assert json.loads(raw)["experiments"] == ["a", "b"]
    assert decode_index(raw) == (frozenset({"a", "b"}), 1234)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'{"schema": 2, "created": 1, "experiments": []}',
        b'{"schema": 1, "created": "x", "experiments": []}',
        b'{"schema": 1, "created": 1, "experiments": ["bad key"]}',
        b'{"schema": 1, "created": 1, "experiments": [3]}',
        b'{"schema": 1, "created": 1, "experiments": ' + b"[" * 100 + b"]" * 100 + b"}",
    ],
)
def test_an_unusable_index_is_one_error(raw: bytes) -> None:
    with pytest.raises(LiveIndexError):
        decode_index(raw)


def test_encode_refuses_what_decode_would() -> None:
    with pytest.raises(LiveIndexError):
        encode_index(["bad key"], 1)
    assert snapshot_key("hero") == "perch:snapshot:hero"
