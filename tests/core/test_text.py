"""core.text: what counts as text, and JSON parsing that never lets hostile input escape as a 500."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.text import INT64_MAX, INT64_MIN, MAX_JSON_DEPTH, JSONInputError, is_int64, is_text, parse_json


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("", True),
        ("mobile", True),
        ("café ☕", True),
        ("😀", True),
        ("\ud800", False),
        ("a\udfffb", False),
        ("a\x00", False),
        (b"bytes", False),
        (3, False),
        (None, False),
    ],
)
def test_is_text(value: object, ok: bool) -> None:
    assert is_text(value) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (0, True),
        (INT64_MAX, True),
        (INT64_MIN, True),
        (INT64_MAX + 1, False),
        (INT64_MIN - 1, False),
        (True, False),
        (1.0, False),
        ("1", False),
    ],
)
def test_is_int64(value: object, ok: bool) -> None:
    assert is_int64(value) is ok


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),  # RecursionError inside json
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "nested deeper"),
        (b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1), "nested deeper"),
        (b"9" * 5000, "not usable JSON"),  # CPython's 4,300-digit conversion limit
        (b'"\\ud800"', "not valid UTF-8 text"),
        (b'{"\\udc80": 1}', "object key"),
        (b'["ok", {"x": "a\\u0000b"}]', "not valid UTF-8 text"),
        (b"\xff", "not valid UTF-8"),
        (b'"\xed\xa0\x80"', "not valid UTF-8"),  # a surrogate encoded as raw bytes
        (b"{", "not valid JSON"),
        (b"NaN-ish", "not valid JSON"),
    ],
)
def test_hostile_bodies_are_json_input_errors(body: bytes, message: str) -> None:
    with pytest.raises(JSONInputError, match=message):
        parse_json(body)


def test_valid_text_and_exact_depth_pass() -> None:
    assert parse_json(b'"\\ud83d\\ude00"') == "😀"  # a surrogate *pair* is one character
    assert parse_json(b'["\\\\ud800"]') == ["\\ud800"]  # an escaped backslash, not an escape
    nested = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json(nested) is not None


def test_check_text_false_leaves_text_and_depth_to_the_caller() -> None:
    assert parse_json(b'{"a": "\\ud800"}', check_text=False) == {"a": "\ud800"}
    assert parse_json(b"[" * 100 + b"]" * 100, check_text=False) is not None  # validated flatly later
    with pytest.raises(JSONInputError, match="nested deeper"):  # what the parser cannot take, still
        parse_json(b"[" * 100_000 + b"]" * 100_000, check_text=False)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_parse_json_accepts_what_json_dumps_makes_or_refuses_it_cleanly(doc: object) -> None:
    body = json.dumps(doc).encode()
    try:
        got = parse_json(body)
    except JSONInputError:
        return  # refused with a message: surrogates from st.text(), or too deep
    assert got == doc
    json.dumps(got, ensure_ascii=False).encode("utf-8")  # what it accepts encodes
