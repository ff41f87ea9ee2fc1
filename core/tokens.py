"""Signed decision tokens: the only way a browser's outcome beacon is credited.

The edge mints one with every decision (in the JSON answer, and as ``data-perch-token`` on a
filled slot) and verifies it when the beacon comes back. Without it, anyone could report
conversions for any decision id, or for decisions never made, and steer the bandit.

``t1.<payload>.<mac>``: ``payload`` is base64url of compact JSON
``[decision_id, experiment, arm, cell, ts_ms, snapshot_version, unit_tag, reason]`` and ``mac`` is the
first 128 bits of HMAC-SHA256 (``PERCH_EDGE_SECRET``, domain-tagged) in hex. ``cell`` is the
decision's context features (what the learner files the exposure under), ``unit_tag`` a keyed
hash of the visitor's unit, so a token copied to another visitor's browser is refused without
the token revealing the unit. The whole thing is safe in an HTML attribute, a URL and JSON.

``reason`` (core.decide.REASONS) came later: with it a token describes its decision completely, so
the control plane credits an outcome that carries one to its cell without looking up the exposure
(:func:`verify_token`). Tokens minted before it (7 fields) still verify, with ``reason`` "".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.decide import REASONS
from core.errors import PerchError
from core.snapshot import KEY_RE
from core.text import is_int64, is_text

__all__ = [
    "MAX_TOKEN_CHARS",
    "UNIT_TAG_RE",
    "DecisionToken",
    "TokenError",
    "mint_token",
    "read_token",
    "unit_tag",
    "verify_token",
]

TOKEN_VERSION = "t1"
MAX_TOKEN_CHARS = 4096
_TAG = b"perch-decision-v1\x00"
_UNIT_TAG = b"perch-unit-v1\x00"
_DECISION_ID = re.compile(r"[0-9a-f]{32}")
UNIT_TAG_RE = re.compile(r"[0-9a-f]{16}")  # what unit_tag() returns (for a unit)
_MAC_HEX = 32
CLOCK_SKEW_MS = 60_000  # isolates' clocks differ a little; a beacon may reach one that is behind


class TokenError(PerchError, ValueError):
    """A decision token is malformed, forged, expired or someone else's; the message says which."""


@dataclass(frozen=True, slots=True)
class DecisionToken:
    decision_id: str
    experiment: str
    arm: str
    cell: dict[str, str]
    ts_ms: int
    snapshot_version: int
    unit_tag: str  # "" for a visitor without consent (no unit)
    reason: str = ""  # "" in tokens minted before it was added


def unit_tag(secret: str, unit: str | None) -> str:
    """A keyed 64-bit tag of ``unit``: equal units, equal tags; the tag reveals nothing of the unit."""
    if unit is None:
        return ""
    return hmac.new(secret.encode(), _UNIT_TAG + unit.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[
        :16
    ]


def _mac(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), _TAG + payload.encode("ascii"), hashlib.sha256).hexdigest()[:_MAC_HEX]


def mint_token(secret: str, token: DecisionToken) -> str:
    fields = [
        token.decision_id,
        token.experiment,
        token.arm,
        token.cell,
        token.ts_ms,
        token.snapshot_version,
        token.unit_tag,
        token.reason,
    ]
    raw = json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    payload = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return f"{TOKEN_VERSION}.{payload}.{_mac(secret, payload)}"


def _fields(doc: Any) -> DecisionToken:
    if not (isinstance(doc, list) and len(doc) in (7, 8)):
        raise TokenError("decision token payload must be a list of 8 fields")
    decision_id, experiment, arm, cell, ts_ms, version, tag = doc[:7]
    reason = doc[7] if len(doc) == 8 else ""
    ok = (
        isinstance(decision_id, str)
        and bool(_DECISION_ID.fullmatch(decision_id))
        and isinstance(experiment, str)
        and bool(KEY_RE.fullmatch(experiment))
        and isinstance(arm, str)
        and bool(KEY_RE.fullmatch(arm))
        and isinstance(cell, dict)
        and all(is_text(k) and is_text(v) for k, v in cell.items())
        and is_int64(ts_ms)
        and is_int64(version)
        and isinstance(tag, str)
        and (reason == "" or reason in REASONS)
    )
    if not ok:
        raise TokenError("decision token payload has a field of the wrong kind")
    return DecisionToken(decision_id, experiment, arm, cell, ts_ms, version, tag, reason)


def verify_token(secret: str, token: object) -> DecisionToken:
    """The decision ``token`` describes, if it is ours (its MAC); no age or visitor check.

    For the control plane, which trusts the edge to have made those checks when the beacon came.
    """
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS or not token.isascii():
        raise TokenError(f"token must be the decision's token string (at most {MAX_TOKEN_CHARS} characters)")
    version, _, rest = token.partition(".")
    payload, _, mac = rest.partition(".")
    if version != TOKEN_VERSION or len(mac) != _MAC_HEX or not payload:
        raise TokenError("token is not a Perch decision token")
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        raise TokenError("token signature does not match: forged, altered or from another deployment")
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        return _fields(json.loads(raw))
    except (binascii.Error, ValueError, RecursionError) as exc:
        if isinstance(exc, TokenError):
            raise
        raise TokenError("token payload is unreadable") from None


def read_token(
    secret: str, token: object, *, now_ms: int, max_age_ms: int, units: Sequence[str | None]
) -> tuple[DecisionToken, str | None]:
    """The decision ``token`` vouches for, and which of the requester's ``units`` it was minted for.

    A visitor may hold two: the anonymous cookie a decision was made for, and the user id they
    signed in as since (a conversion is often right after signing in). Raises :class:`TokenError`
    unless the token is ours, fresh and minted for one of them.
    """
    decoded = verify_token(secret, token)
    if not -CLOCK_SKEW_MS <= now_ms - decoded.ts_ms <= max_age_ms:
        raise TokenError(
            f"token of {decoded.ts_ms} is outside the {max_age_ms // 1000}s a beacon may follow it"
        )
    for unit in units:
        if hmac.compare_digest(decoded.unit_tag.encode(), unit_tag(secret, unit).encode()):
            return decoded, unit
    raise TokenError("token was minted for another visitor")
