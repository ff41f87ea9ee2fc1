"""Who the visitor is, and whether we may personalize for them.

* Consent is withheld by ``Sec-GPC: 1``, ``DNT: 1`` or cookie
  ``perch_consent=0``: then no id is made or read, no cookie set, and nothing
  is logged with a unit id.
* A signed-in visitor's id counts only when the site vouches for it: the
  configured header (``X-Perch-User``) or cookie ``perch_user`` carries
  ``v1.<HMAC>.<id>`` made with ``PERCH_IDENTITY_SECRET`` (see
  :func:`core.sign_identity`).  A verified id wins over the cookie; anything
  else, and every claim while no secret is set, is ignored (and counted), so
  a browser cannot pose as another user or stitch strangers together.
* Otherwise the visitor is ``perch_uid`` (32 hex characters); one is made per
  request when missing, from the request's generator — never at import time,
  where Pyodide's memory snapshot would hand every isolate the same ids.
* When an anonymous visitor logs in, the stitch (anonymous id -> user id) is
  reported once: a ``perch_sid`` cookie remembers that it was.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from core import Generator, verify_identity
from core.signing import USER_ID_RE
from edge.platform import EdgeRequest

__all__ = ["Identity", "consents", "identify", "known_units", "parse_cookies"]

UID_COOKIE = "perch_uid"
CONSENT_COOKIE = "perch_consent"
STITCH_COOKIE = "perch_sid"
USER_COOKIE = "perch_user"
_UID = re.compile(r"[0-9a-f]{32}")
_MAX_CLAIM = 3 + 64 + 1 + 256  # "v1." + MAC + "." + the longest id


def parse_cookies(header: str | None) -> dict[str, str]:
    """Cookie pairs as browsers send them; a malformed pair never hides the rest.

    ``http.cookies.SimpleCookie`` silently drops everything after a pair it
    dislikes, which would lose a ``perch_consent=0`` sitting behind some other
    site cookie; this parses pairwise, as Starlette's cookie parser does.
    """
    cookies: dict[str, str] = {}
    for part in (header or "").split(";"):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        cookies.setdefault(name, value)  # the first (most specific path) wins
    return cookies


@dataclass(frozen=True, slots=True)
class Identity:
    unit: str | None  # what decisions are keyed on; None without consent
    consent: bool
    set_cookies: tuple[str, ...] = ()
    stitch: tuple[str, str] | None = None  # (anonymous id, user id), to report once
    rejected_claim: bool = False  # a user id was offered but not vouched for: ignored
    fresh: bool = False  # an id made on this request: nothing can be known about them yet


def _cookie(name: str, value: str, max_age: int) -> str:
    return f"{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax"


def _stitch_mark(anonymous: str, user: str) -> str:
    return hashlib.sha256(f"{anonymous}|{user}".encode()).hexdigest()[:16]


def consents(request: EdgeRequest, cookies: Mapping[str, str]) -> bool:
    return not (
        request.header("sec-gpc") == "1" or request.header("dnt") == "1" or cookies.get(CONSENT_COOKIE) == "0"
    )


def _user(
    request: EdgeRequest, cookies: Mapping[str, str], user_header: str, secret: str | None
) -> tuple[str | None, bool]:
    """(the verified user id or None, whether an unverified claim was ignored)."""
    claim = (request.header(user_header) or cookies.get(USER_COOKIE) or "").strip()
    if not claim:
        return None, False
    user = verify_identity(secret, claim) if secret and len(claim) <= _MAX_CLAIM else None
    if user is None or not USER_ID_RE.fullmatch(user):
        return None, True
    return user, False


def _anonymous(cookies: Mapping[str, str]) -> str | None:
    uid = cookies.get(UID_COOKIE)
    return uid if uid is not None and _UID.fullmatch(uid) else None  # tampered or foreign: ignored


def known_units(
    request: EdgeRequest, cookies: Mapping[str, str], user_header: str, secret: str | None = None
) -> tuple[str | None, ...]:
    """Every id the visitor holds, user first (never makes one); ``(None,)`` without consent.

    A decision made while anonymous may convert after the visitor signed in: its token was
    minted for the anonymous id, which the cookie still carries.
    """
    if not consents(request, cookies):
        return (None,)
    user = _user(request, cookies, user_header, secret)[0]
    return tuple(u for u in (user, _anonymous(cookies)) if u is not None)


def identify(
    request: EdgeRequest,
    cookies: Mapping[str, str],
    user_header: str,
    rng: Generator,
    max_age: int,
    *,
    secret: str | None = None,
) -> Identity:
    if not consents(request, cookies):
        return Identity(unit=None, consent=False)
    anonymous = _anonymous(cookies)
    set_cookies: list[str] = []
    if anonymous is None:
        anonymous = f"{rng.getrandbits(128):032x}"
        set_cookies.append(_cookie(UID_COOKIE, anonymous, max_age))
    user, rejected = _user(request, cookies, user_header, secret)
    if user is None:
        return Identity(
            unit=anonymous,
            consent=True,
            set_cookies=tuple(set_cookies),
            rejected_claim=rejected,
            fresh=bool(set_cookies),
        )
    stitch = None
    mark = _stitch_mark(anonymous, user)
    if cookies.get(STITCH_COOKIE) != mark:
        stitch = (anonymous, user)
        set_cookies.append(_cookie(STITCH_COOKIE, mark, max_age))
    return Identity(unit=user, consent=True, set_cookies=tuple(set_cookies), stitch=stitch)
