"""Within-session features, from a signed session cookie: the first visit counts from its first page.

``perch_session`` holds ``s1~<first_s>~<start_s>~<last_s>~<gap_s>~<pages>~<visits>~<interest>~<mac>``:
when the visitor was first seen, when this session started and last did something, how long they
had been away before it, pages in it, sessions so far, and the category of their latest page view
in it (from ``/v1/signals``). The MAC (HMAC-SHA256 under the edge secret, 16 bytes) covers the
fields and the visitor's unit, so a browser can neither edit the cookie nor carry another
visitor's; a cookie that does not verify is ignored and a new one made. A session ends after 30
minutes without a request.

The features a contextual model can use from the first request on (no profile needed):

* ``session.visitor``: ``new`` in a visitor's first session, then ``returning``;
* ``session.pages``: ``1``, ``2-3``, ``4-9`` or ``10+`` pages in this session, this one included;
* ``session.gap``: ``first``, or the time away before this session: ``<1h``, ``<1d``, ``<1w``, ``1w+``;
* ``session.interest``: the category of the latest page viewed in this session, when one was sent.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote

from core.signals import CATEGORY_RE

__all__ = ["SESSION_COOKIE", "Session", "advance", "read_session", "session_cookie"]

SESSION_COOKIE = "perch_session"
IDLE_S = 30 * 60
_VERSION = "s1"
_INT = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True, slots=True)
class Session:
    first_s: int
    start_s: int
    last_s: int
    gap_s: int  # away before this session; -1 in the first
    pages: int
    visits: int
    interest: str = ""

    def features(self) -> dict[str, str]:
        pages = self.pages
        out = {
            "session.visitor": "new" if self.visits <= 1 else "returning",
            "session.pages": "1" if pages <= 1 else "2-3" if pages <= 3 else "4-9" if pages <= 9 else "10+",
            "session.gap": _gap(self.gap_s),
        }
        if self.interest:
            out["session.interest"] = self.interest
        return out


def _gap(seconds: int) -> str:
    if seconds < 0:
        return "first"
    return "<1h" if seconds < 3600 else "<1d" if seconds < 86_400 else "<1w" if seconds < 604_800 else "1w+"


def _mac(secret: str, unit: str, fields: str) -> str:
    message = f"perch-session|{unit}|{fields}".encode("utf-8", "replace")
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def _fields(s: Session) -> str:
    numbers = (s.first_s, s.start_s, s.last_s, s.gap_s, s.pages, s.visits)
    return "~".join([_VERSION, *map(str, numbers), quote(s.interest, safe="")])


def session_cookie(session: Session, secret: str, unit: str, max_age: int) -> str:
    fields = _fields(session)
    value = f"{fields}~{_mac(secret, unit, fields)}"
    return f"{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax"


def read_session(raw: str | None, secret: str, unit: str) -> Session | None:
    """The session a cookie value holds, or None when it is absent, malformed or not ours."""
    if not raw or len(raw) > 400:
        return None
    fields, _, mac = raw.rpartition("~")
    parts = fields.split("~")
    if len(parts) != 8 or parts[0] != _VERSION:
        return None
    if not hmac.compare_digest(_mac(secret, unit, fields).encode(), mac.encode("utf-8", "replace")):
        return None
    gap = parts[4]
    numbers = [parts[1], parts[2], parts[3], gap.removeprefix("-"), parts[5], parts[6]]
    if not all(_INT.fullmatch(n) for n in numbers):
        return None
    interest = unquote(parts[7])
    if interest and not CATEGORY_RE.fullmatch(interest):
        return None
    first, start, last, _, pages, visits = (int(n) for n in numbers)
    return Session(first, start, last, int(gap), pages, visits, interest)


def advance(
    session: Session | None, now_s: int, *, page: bool = True, interest: str | None = None
) -> Session:
    """The session after a request at ``now_s`` (``page``: it counts as a page; ``interest``: a
    category just viewed). A request 30 minutes after the last starts a new session."""
    if session is None:
        session = Session(now_s, now_s, now_s, -1, 0, 1)
    elif now_s - session.last_s > IDLE_S:
        session = Session(
            session.first_s, now_s, now_s, max(0, now_s - session.last_s), 0, session.visits + 1
        )
    session = replace(session, last_s=max(session.last_s, now_s), pages=session.pages + (1 if page else 0))
    if interest is not None and CATEGORY_RE.fullmatch(interest):
        session = replace(session, interest=interest)
    return session
