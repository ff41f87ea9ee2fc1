"""HMAC signatures: event batches (edge -> control plane) and site-vouched identities (site -> edge).

Header ``X-Perch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`` where the
MAC covers ``f"{t}." + body`` (Stripe's scheme): the timestamp is signed, so
a captured batch cannot be replayed later with a fresh one.  The edge signs,
the control plane verifies (and keeps its own replay window).
"""

from __future__ import annotations

import hashlib
import hmac
import re

from core.errors import PerchError

__all__ = [
    "SIGNATURE_HEADER",
    "USER_ID_RE",
    "SignatureError",
    "fresh_timestamp",
    "replay_key",
    "sign",
    "sign_identity",
    "verify",
    "verify_any_age",
    "verify_identity",
]

SIGNATURE_HEADER = "X-Perch-Signature"
DEFAULT_TOLERANCE_S = 300


class SignatureError(PerchError, ValueError):
    """A signature header is missing, malformed, expired or wrong."""


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Perch-Signature`` header value for ``body`` sent at ``timestamp``."""
    if not secret:
        raise SignatureError("signing secret must not be empty")
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def _parts(header: str | None) -> dict[str, list[str]]:
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header, expected 't=<unix>,v1=<hex hmac>'")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(name, []).append(value)
    return parts


def fresh_timestamp(header: str | None, now: int, tolerance_s: int = DEFAULT_TOLERANCE_S) -> int:
    """The header's ``t`` if it is within ``tolerance_s`` of ``now``; else :class:`SignatureError`.

    Needs no body: a server checks it before reading one, so an expired or malformed
    header costs it nothing.
    """
    raw = _parts(header).get("t", [""])[0]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12):
        raise SignatureError(f"malformed {SIGNATURE_HEADER}: expected 't=<unix>,v1=<hex hmac>'")
    timestamp = int(raw)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"signature timestamp {timestamp} is more than {tolerance_s}s from now ({now})")
    return timestamp


def verify(
    secret: str, header: str | None, body: bytes, now: int, tolerance_s: int = DEFAULT_TOLERANCE_S
) -> int:
    """Check ``header`` against ``body``; return its timestamp or raise :class:`SignatureError`."""
    timestamp = fresh_timestamp(header, now, tolerance_s)
    expected = _mac(secret, timestamp, body)
    # Several v1 values are allowed so a secret can be rotated without downtime.
    # As bytes: compare_digest raises TypeError on a str with non-ASCII characters, which a client
    # can put in any header.
    candidates = [c.encode("utf-8", "replace") for c in _parts(header).get("v1", [])]
    if not any(hmac.compare_digest(expected.encode(), candidate) for candidate in candidates):
        raise SignatureError("signature does not match the body")
    return timestamp


def verify_any_age(secret: str, header: str | None, body: bytes) -> int:
    """:func:`verify` without the freshness window, for queued batches that may wait hours.

    Replays are harmless there only because the consumer deduplicates every event by its id.
    """
    raw = _parts(header).get("t", [""])[0]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12):
        raise SignatureError(f"malformed {SIGNATURE_HEADER}: expected 't=<unix>,v1=<hex hmac>'")
    return verify(secret, header, body, now=int(raw), tolerance_s=0)


def replay_key(secret: str, timestamp: int, body: bytes) -> str:
    """What identifies a verified batch for replay detection: our own MAC of (t, body).

    Not any ``v1`` value from the header, which a replayer can reorder or pad with junk
    (verify accepts the header if *any* of them matches).
    """
    return _mac(secret, timestamp, body)


# --- identities the site vouches for ---------------------------------------------------------------
#
# A signed-in visitor's id reaches the edge in a header or cookie the *browser* sends, so on its own
# it proves nothing: anyone can claim any id. The site, which authenticated the visitor, signs it
# with PERCH_IDENTITY_SECRET (shared with the edge only): ``v1.<hex HMAC-SHA256>.<id>``. The id goes
# last so it may contain dots. The MAC covers a domain tag, so no other Perch MAC can stand in.

IDENTITY_VERSION = "v1"
_IDENTITY_TAG = b"perch-identity-v1\x00"


def _identity_mac(secret: str, user_id: str) -> str:
    return hmac.new(
        secret.encode("utf-8"), _IDENTITY_TAG + user_id.encode("utf-8"), hashlib.sha256
    ).hexdigest()


# What a user id may be: printable ASCII without spaces (it travels in a header and a cookie).
USER_ID_RE = re.compile(r"[\x21-\x7e]{1,256}")


def sign_identity(secret: str, user_id: str) -> str:
    """The token a site puts in the identity header or cookie for ``user_id``."""
    if not secret:
        raise SignatureError("identity secret must not be empty")
    if not USER_ID_RE.fullmatch(user_id):
        raise SignatureError(
            f"user id {user_id[:40]!r}: 1-256 printable ASCII characters, no spaces (encode or hash others)"
        )
    return f"{IDENTITY_VERSION}.{_identity_mac(secret, user_id)}.{user_id}"


def verify_identity(secret: str, token: str) -> str | None:
    """The user id ``token`` vouches for under ``secret``, or None (never raises)."""
    version, _, rest = token.partition(".")
    mac, _, user_id = rest.partition(".")
    if version != IDENTITY_VERSION or len(mac) != 64 or not USER_ID_RE.fullmatch(user_id) or not secret:
        return None
    try:
        expected = _identity_mac(secret, user_id)
    except UnicodeEncodeError:
        return None
    # As bytes: compare_digest raises TypeError on a str with non-ASCII characters.
    return user_id if hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")) else None
