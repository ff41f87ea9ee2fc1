"""Hypothesis strategies for what hostile clients send, shared by the edge and control-plane fuzz tests."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

__all__ = ["HOSTILE_TEXT", "JSON_DOCS", "SCALARS", "dumps"]

# Text as hostile clients write it: lone surrogates, NUL and other control characters included.
_KNOWN_BAD = ["\ud800", "a\x00b", "\x01", "\udfff\ud800", "", " ", "é" * 200, "x" * 300, "²", "../x", "a/b"]
HOSTILE_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
    [*_KNOWN_BAD, "mobile", "home-hero", "hero"]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63, -(2**63) - 1, 10**400, 10**4000])
    | st.floats(allow_nan=False, allow_infinity=False)
    | HOSTILE_TEXT
)
JSON_DOCS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(HOSTILE_TEXT, inner, max_size=5),
    max_leaves=25,
)


def dumps(doc: Any) -> bytes:
    """JSON as an attacker sends it: ensure_ascii writes lone surrogates as \\udXXX escapes."""
    return json.dumps(doc, ensure_ascii=True, allow_nan=False).encode()
