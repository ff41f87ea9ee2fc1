"""Dashboard sessions: a signed cookie for the admin token, checked on every page.

The cookie holds an expiry and a nonce, HMAC-signed with a key derived from ``PERCH_ADMIN_TOKEN``:
no server state until a logout revokes a nonce, and rotating the token ends every session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request

from control_plane.settings import Settings
from control_plane.storage.store import Store

__all__ = [
    "MAX_LOGIN_BODY",
    "SESSION_COOKIE",
    "SESSION_TTL_S",
    "has_session",
    "new_session",
    "read_form",
    "same_origin",
    "session_nonce",
    "session_valid",
]

SESSION_COOKIE = "perch_session"
SESSION_TTL_S = 12 * 3600
MAX_LOGIN_BODY = 4096


def _session_key(settings: Settings) -> bytes:
    # A key of its own (not the token): a leaked cookie says nothing about the token.
    return hmac.new(settings.admin_token.encode(), b"perch:dashboard-session:v1", hashlib.sha256).digest()


def _mac(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def new_session(settings: Settings, now_ms: int) -> str:
    """A cookie value: ``v1.<expiry, unix s>.<nonce>.<HMAC of the rest>``."""
    payload = f"v1.{now_ms // 1000 + SESSION_TTL_S}.{secrets.token_hex(16)}"
    return f"{payload}.{_mac(_session_key(settings), payload)}"


def session_nonce(settings: Settings, value: str | None, now_ms: int) -> tuple[str, int] | None:
    """(nonce, expiry) of a well-formed, authentic, unexpired session cookie, else None."""
    if not value:
        return None
    payload, _, mac = value.rpartition(".")
    parts = payload.split(".")
    if len(parts) != 3 or parts[0] != "v1" or not (parts[1].isascii() and parts[1].isdigit()):
        return None
    # Bytes: compare_digest refuses non-ASCII str, and cookies are whatever the client sends.
    if not hmac.compare_digest(mac.encode(), _mac(_session_key(settings), payload).encode()):
        return None
    now_s = now_ms // 1000
    expires = int(parts[1])
    return (parts[2], expires) if now_s < expires <= now_s + SESSION_TTL_S else None


def session_valid(settings: Settings, value: str | None, now_ms: int, store: Store | None = None) -> bool:
    """Authentic, unexpired and (with ``store``) not ended by a logout."""
    found = session_nonce(settings, value, now_ms)
    return found is not None and (store is None or not store.session_revoked(found[0]))


def has_session(request: Request, settings: Settings, now_ms: int, store: Store | None = None) -> bool:
    """Whether ``request`` carries a valid dashboard session (for other routes to accept it)."""
    return session_valid(settings, request.cookies.get(SESSION_COOKIE), now_ms, store)


def same_origin(request: Request) -> bool:
    """False for a POST a browser says came from another site; SameSite=Strict is the first line."""
    host = request.headers.get("host", "").lower()
    origin = request.headers.get("origin")
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc.lower() == host
    referer = request.headers.get("referer")
    if referer:
        return urlsplit(referer).netloc.lower() == host
    return True  # no browser omits both on a cross-site form POST


async def read_form(request: Request) -> dict[str, str] | None:
    """An url-encoded form of at most MAX_LOGIN_BODY bytes (None if larger); first value per name."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_LOGIN_BODY:
            return None
        chunks.append(chunk)
    fields = parse_qs(b"".join(chunks).decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}
