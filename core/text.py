"""Text and JSON from outside: what every layer accepts before it stores or hashes anything.

Two rules, shared by the edge and the control plane so they refuse the same input:

* **Text** is a ``str`` that encodes to UTF-8 and holds no NUL.  JSON's ``\\ud800`` escape
  decodes to a lone surrogate that Python keeps in a ``str`` but cannot encode: one such value
  stored as a context feature once made every later publish of its experiment fail.  NUL is
  refused because PostgreSQL text cannot hold it.
* **JSON bodies** are parsed by :func:`parse_json`, which turns every way ``json.loads`` can
  fail on hostile input (invalid UTF-8, a ``RecursionError`` from deep nesting, a ``ValueError``
  from an integer of more than 4,300 digits) into :class:`JSONInputError` with a message that
  says what was expected, and bounds nesting so later recursive code is safe.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeGuard

from core.errors import PerchError

__all__ = [
    "MAX_JSON_DEPTH",
    "INT64_MAX",
    "INT64_MIN",
    "JSONInputError",
    "is_int64",
    "is_text",
    "may_hold_non_text",
    "parse_json",
]

MAX_JSON_DEPTH = 32
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class JSONInputError(PerchError, ValueError):
    """A body is not the JSON it should be; the message says why."""


def is_text(value: object) -> TypeGuard[str]:
    """True for a ``str`` that encodes to UTF-8 and contains no NUL."""
    if not isinstance(value, str):
        return False
    if value.isascii():
        return "\x00" not in value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def is_int64(value: object) -> TypeGuard[int]:
    """An ``int`` (not a ``bool``) that fits a signed 64-bit column."""
    return isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX


# Only these escapes can put a lone surrogate or a NUL into a decoded string: raw bytes that
# are not UTF-8 fail decoding, and raw control characters are invalid JSON.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F]|0000)")


def may_hold_non_text(raw: bytes) -> bool:
    """Whether JSON ``raw`` can decode to a string that is not text (a lone surrogate or a NUL):
    only through those escapes, so without them every decoded string needs no check."""
    return _SUSPECT_ESCAPE.search(raw) is not None


def _check_depth(doc: Any, max_depth: int) -> None:
    """Iteratively, so hostile nesting never recurses: containers only."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise JSONInputError(f"JSON nested deeper than {max_depth} levels")
        values = node.values() if isinstance(node, dict) else node
        stack.extend((v, depth + 1) for v in values if isinstance(v, (dict, list)))


def _check_text(doc: Any) -> None:
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if not is_text(key):
                    raise JSONInputError(f"object key {key[:40]!r} is not valid UTF-8 text (or holds NUL)")
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and not is_text(node):
            raise JSONInputError(f"string {node[:40]!r} is not valid UTF-8 text (or holds NUL)")


def parse_json(body: bytes | str, *, max_depth: int = MAX_JSON_DEPTH, check_text: bool = True) -> Any:
    """``json.loads`` for bodies from outside: :class:`JSONInputError` for anything unusable.

    ``check_text=False`` leaves lone surrogates, NUL and nesting depth to the caller, for a batch
    whose events are validated one by one, flatly (one bad event must not cost the others their
    place); nesting deep enough to exhaust the parser is still an error.
    """
    if isinstance(body, str):
        if check_text and not is_text(body):
            raise JSONInputError("body is not valid UTF-8 text (lone surrogate or NUL)")
        text, raw = body, body.encode("utf-8", "surrogatepass")
    else:
        raw = body
        try:
            # Strict: json.loads(bytes) would decode surrogates written as raw bytes ("surrogatepass").
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise JSONInputError("body is not valid UTF-8") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONInputError(f"body is not valid JSON ({exc})") from None
    except RecursionError:
        raise JSONInputError(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # an integer past CPython's 4,300-digit conversion limit
        raise JSONInputError(f"body is not usable JSON ({str(exc)[:100]})") from None
    # json.loads itself stops runaway nesting (RecursionError, above); the walk bounds what later
    # recursive code may meet. A batch (check_text=False) is validated flatly, event by event, so it
    # skips the walk: that is most of this function's cost on a 5,000-event batch.
    if check_text and isinstance(doc, (dict, list)) and raw.count(b"[") + raw.count(b"{") > max_depth:
        _check_depth(doc, max_depth)
    if check_text and may_hold_non_text(raw):
        _check_text(doc)
    return doc
