"""The dashboard's handlers: login, logout, the experiments list and an experiment's page."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from control_plane.http.dashboard.pages import (
    ALERTS_COUNTED,
    experiment_page,
    login_page,
    message_page,
    overview_page,
)
from control_plane.http.dashboard.session import (
    SESSION_COOKIE,
    SESSION_TTL_S,
    has_session,
    new_session,
    read_form,
    same_origin,
    session_nonce,
)
from control_plane.http.dashboard.style import HEADERS
from control_plane.learning.report import Report, build_report
from control_plane.profiles.clusters import Clusters
from control_plane.settings import Settings
from control_plane.storage import profiles as profile_rows
from control_plane.storage.store import ExperimentRecord, Store
from core import KEY_RE

__all__ = ["Dashboard", "ReportFn", "dashboard_routes"]

log = logging.getLogger("perch.dashboard")

ReportFn = Callable[[Store, ExperimentRecord, int], Report]


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Dashboard:
    """The dashboard's handlers, bound to one store, settings and clock."""

    def __init__(
        self, store: Store, settings: Settings, now_ms: Callable[[], int], report: ReportFn = build_report
    ) -> None:
        self.store, self.settings, self.now_ms, self.report = store, settings, now_ms, report
        self.token = settings.admin_token.encode()

    def html(self, content: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(content, status_code=status, headers=HEADERS)

    def redirect_home(self) -> RedirectResponse:
        return RedirectResponse("/", status_code=303, headers=HEADERS)

    def logged_in(self, request: Request) -> bool:
        return has_session(request, self.settings, self.now_ms(), self.store)

    def overview(self) -> list[dict[str, Any]]:
        rows = []
        for record in self.store.list_experiments():
            key = record.spec.key
            # Metadata only: the newest summary can be megabytes, and the overview shows two numbers.
            last = self.store.latest_snapshot(key)
            newest = {"version": last.version, "created_ms": last.created_ms} if last else None
            rows.append(
                {
                    "key": key,
                    "version": record.version,
                    "arms": [a.key for a in record.spec.arms],
                    "max_age_s": record.spec.max_age_s,
                    "last_snapshot": newest,
                    "alerts": len(self.store.alerts(key, ALERTS_COUNTED)),
                }
            )
        return rows

    async def index(self, request: Request) -> Response:
        if not self.logged_in(request):
            return self.html(login_page())
        rows = await run_in_threadpool(self.overview)
        return self.html(overview_page(rows, self.now_ms()))

    async def login(self, request: Request) -> Response:
        if not same_origin(request):
            return self.html(message_page("Forbidden", "Cross-site request refused.", logged_in=False), 403)
        form = await read_form(request)
        if form is None:
            return self.html(login_page("That request was too large."), 413)
        if not hmac.compare_digest(form.get("token", "").encode(), self.token):
            log.warning("dashboard: failed login from %s", request.client.host if request.client else "?")
            return self.html(login_page("That is not the admin token."), 401)
        response = self.redirect_home()
        response.set_cookie(
            SESSION_COOKIE,
            new_session(self.settings, self.now_ms()),
            max_age=SESSION_TTL_S,
            path="/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(self, request: Request) -> Response:
        if not same_origin(request):
            return self.html(message_page("Forbidden", "Cross-site request refused.", logged_in=False), 403)
        found = session_nonce(self.settings, request.cookies.get(SESSION_COOKIE), self.now_ms())
        if found is not None:  # ended on the server too: a copy of the cookie stops working now
            await run_in_threadpool(self.store.revoke_session, found[0], found[1], self.now_ms() // 1000)
        response = self.redirect_home()
        response.delete_cookie(
            SESSION_COOKIE, path="/", secure=request.url.scheme == "https", httponly=True, samesite="strict"
        )
        return response

    async def experiment(self, request: Request) -> Response:
        if not self.logged_in(request):
            return self.redirect_home()
        key = request.path_params["key"]
        record = await run_in_threadpool(self.store.get_experiment, key) if KEY_RE.fullmatch(key) else None
        if record is None or record.archived:
            return self.html(
                message_page("Not found", f"There is no experiment {key!r}.", logged_in=True), 404
            )
        now = self.now_ms()
        report = await run_in_threadpool(self.report, self.store, record, now)
        clusters = await run_in_threadpool(self.clusters, key)
        return self.html(experiment_page(record, report, now, clusters))

    def clusters(self, experiment: str) -> dict[str, Any] | None:
        """The behavioural clusters' table for ``experiment``'s page; None before any were fitted."""
        with self.store.engine.connect() as conn:
            held = profile_rows.state(conn, "clusters", None)
            if not held:
                return None
            fitted = Clusters.from_dict(held)
            # Exposures held in ClickHouse cannot be joined with the profiles here: sizes only.
            sql_events = self.store.events is None and not self.store.events_elsewhere
            sizes, by_arm = profile_rows.clusters_table(conn, experiment if sql_events else "")
        rows = [
            {
                "cluster": f"c{label}",
                "profiles": sizes.get(f"c{label}", 0),
                "favours": fitted.top(label),
                "arms": {arm: v for (c, arm), v in by_arm.items() if c == f"c{label}"},
            }
            for label in sorted(fitted.labels)
        ]
        return {"rows": rows, "silhouette": fitted.silhouette}


def dashboard_routes(
    store: Store,
    settings: Settings,
    now_ms: Callable[[], int] = _wall_ms,
    *,
    report: ReportFn = build_report,
) -> list[Route]:
    """The dashboard's routes, to mount beside the API's; ``report`` is replaceable for tests."""
    dashboard = Dashboard(store, settings, now_ms, report)
    return [
        Route("/", dashboard.index, methods=["GET"], include_in_schema=False),
        Route("/login", dashboard.login, methods=["POST"], include_in_schema=False),
        Route("/logout", dashboard.logout, methods=["POST"], include_in_schema=False),
        Route("/experiments/{key}", dashboard.experiment, methods=["GET"], include_in_schema=False),
    ]
