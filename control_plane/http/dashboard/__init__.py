"""The operators' dashboard: server-rendered HTML over experiment reports, behind the admin token.

``dashboard_routes(store, settings, now_ms)`` gives the routes to mount next to the API:

- ``GET /``: the login form, or once logged in the list of experiments;
- ``POST /login``: the admin token from the form (never in a URL) for a session cookie;
- ``POST /logout``: drops the cookie;
- ``GET /experiments/{key}``: charts and tables of :func:`control_plane.learning.report.build_report`.

Sessions are stateless: the cookie holds an expiry and a nonce, HMAC-signed with a key derived
from ``PERCH_ADMIN_TOKEN``, so the token itself never leaves the login form and rotating it ends
every session.  The cookie is ``HttpOnly; SameSite=Strict`` (and ``Secure`` over HTTPS); POSTs
must also come from a page of this host when the browser says where they come from (Origin,
else Referer).  Pages carry no script and a CSP that allows only their own inline style, so a
value a visitor controls (context features end up in segment names) can at worst show as text:
everything interpolated is escaped.

Rooms: ``session`` (cookies, origin checks, the login form's body), ``style`` (the stylesheet,
security headers and the escaping HTML helpers), ``pages`` (one function per page section) and
``routes`` (the handlers).
"""

from __future__ import annotations

from control_plane.http.dashboard.pages import experiment_page, login_page, overview_page
from control_plane.http.dashboard.routes import dashboard_routes
from control_plane.http.dashboard.session import (
    SESSION_COOKIE,
    SESSION_TTL_S,
    has_session,
    new_session,
    session_valid,
)

__all__ = [
    "SESSION_COOKIE",
    "SESSION_TTL_S",
    "dashboard_routes",
    "experiment_page",
    "has_session",
    "login_page",
    "new_session",
    "overview_page",
    "session_valid",
]
