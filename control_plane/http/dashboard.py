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
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from base64 import b64encode
from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from control_plane.http import _format as fmt
from control_plane.http.charts import allocation_chart, conversion_chart, lift_chart
from control_plane.learning.report import build_report
from control_plane.learning.report_types import (
    OPE,
    Alert,
    ArmRow,
    Estimates,
    Evaluation,
    FeatureEffect,
    Report,
)
from control_plane.settings import Settings
from control_plane.storage.store import ExperimentRecord, Store
from core import KEY_RE

__all__ = [
    "SESSION_COOKIE",
    "SESSION_TTL_S",
    "dashboard_routes",
    "has_session",
    "new_session",
    "session_valid",
]

log = logging.getLogger("perch.dashboard")

SESSION_COOKIE = "perch_session"
SESSION_TTL_S = 12 * 3600
MAX_LOGIN_BODY = 4096
ALERTS_COUNTED = 100  # the list shows "100+" past this: counting further is not worth a query

ReportFn = Callable[[Store, ExperimentRecord, int], Report]

CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2937;background:#f3f4f6}
header{display:flex;align-items:center;justify-content:space-between;padding:.6rem 1.25rem;
background:#111827;color:#f9fafb}
header a{color:#f9fafb;text-decoration:none;font-weight:600}
header form{margin:0}
main{max-width:1180px;margin:0 auto;padding:1rem 1.25rem 3rem}
h1{font-size:1.4rem;margin:.4rem 0 .2rem}
h2{font-size:1.05rem;margin:0 0 .6rem}
section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:1rem;margin:0 0 1rem;
overflow-x:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:1rem}
.grid section{margin:0}
.meta{color:#4b5563;margin:0 0 1rem}
table{border-collapse:collapse;width:100%}
th,td{padding:.35rem .6rem;border-bottom:1px solid #f0f1f3;text-align:left;vertical-align:top}
th{font-weight:600;color:#374151;background:#f9fafb}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.alerts{border:2px solid #b91c1c;background:#fef2f2}
.alerts h2{color:#b91c1c}
.alerts li{margin:.25rem 0}
.badge{display:inline-block;padding:0 .45rem;border-radius:999px;background:#e5e7eb;font-size:.8rem}
.badge.bad{background:#b91c1c;color:#fff}
.muted{color:#6b7280}
.error{color:#b91c1c;font-weight:600}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
pre{white-space:pre-wrap;margin:0}
svg.perch-chart{display:block;width:100%;height:auto;max-width:760px}
.login{max-width:420px;margin:3rem auto}
.login label{display:block;font-weight:600;margin:.8rem 0 .3rem}
.login input{width:100%;padding:.5rem;border:1px solid #9ca3af;border-radius:6px;font:inherit}
button{padding:.45rem .9rem;border:0;border-radius:6px;background:#2563eb;color:#fff;font:inherit;
cursor:pointer}
header button{background:#374151}
.login button{margin-top:.8rem}
""".strip()

# The one inline style, allowed by its hash: no 'unsafe-inline', no script at all.
_STYLE_HASH = b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


# --- sessions --------------------------------------------------------------------------------


def _session_key(settings: Settings) -> bytes:
    # A key of its own (not the token): a leaked cookie says nothing about the token.
    return hmac.new(settings.admin_token.encode(), b"perch:dashboard-session:v1", hashlib.sha256).digest()


def _mac(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def new_session(settings: Settings, now_ms: int) -> str:
    """A cookie value: ``v1.<expiry, unix s>.<nonce>.<HMAC of the rest>``."""
    payload = f"v1.{now_ms // 1000 + SESSION_TTL_S}.{secrets.token_hex(16)}"
    return f"{payload}.{_mac(_session_key(settings), payload)}"


def _session_nonce(settings: Settings, value: str | None, now_ms: int) -> tuple[str, int] | None:
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
    found = _session_nonce(settings, value, now_ms)
    return found is not None and (store is None or not store.session_revoked(found[0]))


def has_session(request: Request, settings: Settings, now_ms: int, store: Store | None = None) -> bool:
    """Whether ``request`` carries a valid dashboard session (for other routes to accept it)."""
    return session_valid(settings, request.cookies.get(SESSION_COOKIE), now_ms, store)


def _same_origin(request: Request) -> bool:
    """False for a POST a browser says came from another site; SameSite=Strict is the first line."""
    host = request.headers.get("host", "").lower()
    origin = request.headers.get("origin")
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc.lower() == host
    referer = request.headers.get("referer")
    if referer:
        return urlsplit(referer).netloc.lower() == host
    return True  # no browser omits both on a cross-site form POST


async def _form(request: Request) -> dict[str, str] | None:
    """An url-encoded form of at most MAX_LOGIN_BODY bytes (None if larger); first value per name."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_LOGIN_BODY:
            return None
        chunks.append(chunk)
    fields = parse_qs(b"".join(chunks).decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


# --- formatting ------------------------------------------------------------------------------


class Html(str):
    """Markup built here from escaped parts; every other string is escaped when rendered."""


def _h(value: Any) -> str:
    return value if isinstance(value, Html) else escape(str(value), quote=True)


def _table(head: Sequence[tuple[str, bool]], rows: Sequence[Sequence[Any]], css: str = "") -> Html:
    """``head``: (title, numeric?) per column; cells are escaped unless they are :class:`Html`."""
    numeric = [n for _, n in head]
    th = "".join(f'<th{" class=num" if n else ""} scope="col">{_h(t)}</th>' for t, n in head)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if n else ''}>{_h(c)}</td>" for c, n in zip(row, numeric, strict=True))
        + "</tr>"
        for row in rows
    )
    return Html(f'<table class="{_h(css)}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>')


def _page(title: str, body: str, *, logged_in: bool) -> str:
    logout = (
        '<form method="post" action="/logout"><button type="submit">Log out</button></form>'
        if logged_in
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{_h(title)} · Perch</title><style>{CSS}</style></head>'
        f'<body><header><a href="/">Perch control plane</a>{logout}</header><main>{body}</main></body></html>'
    )


# --- pages -----------------------------------------------------------------------------------


def login_page(message: str = "") -> str:
    error = f'<p class="error" role="alert">{_h(message)}</p>' if message else ""
    body = (
        '<section class="login"><h1>Log in</h1>'
        f"{error}"
        '<form method="post" action="/login">'
        '<label for="token">Admin token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>'
        '<button type="submit">Log in</button></form>'
        '<p class="muted">The control plane\'s <code>PERCH_ADMIN_TOKEN</code>.</p></section>'
    )
    return _page("Log in", body, logged_in=False)


def _message_page(title: str, message: str, *, logged_in: bool) -> str:
    body = (
        f'<section><h1>{_h(title)}</h1><p>{_h(message)}</p><p><a href="/">All experiments</a></p></section>'
    )
    return _page(title, body, logged_in=logged_in)


def _experiment_href(key: str) -> str:
    return "/experiments/" + quote(key, safe="")


def overview_page(rows: Sequence[Mapping[str, Any]], now_ms: int) -> str:
    """The experiments list; ``rows`` as made by :meth:`Dashboard.overview`."""
    if not rows:
        listing: str = (
            '<p class="muted">No experiments yet: create one with <code>POST /v1/experiments</code>.</p>'
        )
    else:
        cells = []
        for row in rows:
            last = row.get("last_snapshot")
            if last:
                age_ms = now_ms - last["created_ms"]
                stale = age_ms > row["max_age_s"] * 1000
                age = Html(
                    _h(fmt.age(age_ms))
                    + (' <span class="badge bad">stale: edge serves default</span>' if stale else "")
                )
                version: Any = last["version"]
            else:
                age, version = Html('<span class="muted">never published</span>'), "—"
            alerts = row["alerts"]
            shown = f"{alerts}+" if alerts >= ALERTS_COUNTED else str(alerts)
            badge = Html(f'<span class="badge{" bad" if alerts else ""}">{_h(shown)}</span>')
            link = Html(f'<a href="{_h(_experiment_href(row["key"]))}">{_h(row["key"])}</a>')
            cells.append([link, row["version"], ", ".join(row["arms"]), version, age, badge])
        listing = _table(
            [
                ("experiment", False),
                ("version", True),
                ("arms", False),
                ("last snapshot", True),
                ("snapshot age", False),
                ("alerts", True),
            ],
            cells,
            "experiments",
        )
    body = f"<h1>Experiments</h1><section>{listing}</section>"
    return _page("Experiments", body, logged_in=True)


def _best_arm(arms: Sequence[ArmRow]) -> str:
    if not arms:
        return fmt.DASH
    best = max(arms, key=lambda a: (a.prob_best, a.posterior_mean))
    return f"{best.arm} (P(best) {best.prob_best:.2f})"


def _features(value: Mapping[str, Any] | None) -> str:
    if not value:
        return fmt.DASH
    return ", ".join(f"{k}={v}" for k, v in value.items())


def _alerts_section(alerts: Sequence[Alert]) -> str:
    if not alerts:
        return '<section class="no-alerts"><h2>Alerts</h2><p class="muted">No alerts.</p></section>'
    lis = []
    for alert in alerts:
        shown = json.dumps(alert.details, sort_keys=True, default=str) if alert.details is not None else ""
        if len(shown) > 400:
            shown = shown[:399] + "…"
        lis.append(
            f"<li><time>{_h(fmt.utc(alert.at_ms))}</time> <strong>{_h(alert.kind)}</strong>: "
            f"{_h(alert.message)}" + (f" <code>{_h(shown)}</code>" if shown else "") + "</li>"
        )
    count = f"{len(alerts)} alert{'s' if len(alerts) != 1 else ''}"
    return f'<section class="alerts" role="alert"><h2>{_h(count)}</h2><ul>{"".join(lis)}</ul></section>'


def _effects_section(effects: Sequence[FeatureEffect]) -> str:
    """A contextual model's weights: one row per feature column, one ``effect [95%]`` cell per arm."""
    if not effects:
        return ""
    arms = list(effects[0].arms)
    rows = [
        [row.feature]
        + [
            f"{c.effect:+.2f} [{c.low:+.2f}, {c.high:+.2f}]"
            if (c := row.arms.get(arm)) is not None
            else fmt.DASH
            for arm in arms
        ]
        for row in effects
    ]
    table = _table([("feature", False), *((arm, True) for arm in arms)], rows, "effects")
    return (
        '<section id="effects"><h2>Feature effects</h2><p class="muted">Each arm\'s weight per feature '
        "value in the contextual model (logits for binary rewards), with its 95% interval.</p>"
        f"{table}</section>"
    )


Read = Callable[[Estimates], float | None]
# (row, estimate, its standard error): SNIPS has none of its own; the gate uses the paired error
# of the difference, which its row shows.
_ESTIMATORS: tuple[tuple[str, Read, Read | None], ...] = (
    ("IPS", lambda e: e.ips, lambda e: e.ips_se),
    ("SNIPS", lambda e: e.snips, None),
    ("DR", lambda e: e.dr, lambda e: e.dr_se),
)


def _estimate(value: float | None) -> str:
    return fmt.DASH if value is None else f"{value:.4f}"


def _verdict(evaluation: Evaluation) -> str:
    if evaluation.passed is None:
        return fmt.DASH
    verdict = "passed" if evaluation.passed else "held back"
    if evaluation.difference is not None:
        verdict += f": difference {evaluation.difference:+.4f}"
        verdict += f" ± {evaluation.difference_se:.4f}" if evaluation.difference_se is not None else ""
    if evaluation.tolerance is not None:
        verdict += f", tolerance {evaluation.tolerance:g}"
    return verdict + (f" (overridden: {evaluation.overridden})" if evaluation.overridden else "")


def _ope_rows(evaluation: Evaluation) -> list[list[str]]:
    candidate, current = evaluation.candidate, evaluation.current
    ess = fmt.DASH
    if candidate is not None and candidate.ess is not None:
        ess = f"{candidate.ess:.1f}" + (f" of {candidate.n}" if candidate.n is not None else "")
    rows = []
    for name, estimate, error in _ESTIMATORS:
        value, baseline = (None if e is None else estimate(e) for e in (candidate, current))
        se = evaluation.difference_se
        if error is not None:
            se = None if candidate is None else error(candidate)
        verdict = _verdict(evaluation) if name == "SNIPS" else fmt.DASH
        rows.append([name, _estimate(value), _estimate(baseline), _estimate(se), ess, verdict])
    return rows


def _ope_section(ope: OPE | None) -> str:
    """The newest promotion-gate evaluation as a table: per estimator the candidate's and the
    current snapshot's reward per decision; the gate compares SNIPS, so its row has the verdict."""
    if ope is None:
        return ""
    evaluation = ope.read()
    what = (
        f"Published snapshot {ope.snapshot_version}"
        if ope.source == "snapshot"
        else f"A held-back snapshot ({ope.kind})"
    )
    caption = f"{what}, evaluated at {fmt.utc(ope.at_ms)}" + (
        f" on {evaluation.exposures:,} logged exposures" if evaluation.exposures is not None else ""
    )
    head = [("estimator", False), ("candidate", True), ("current", True), ("SE", True), ("ESS", True)]
    table = _table([*head, ("verdict", False)], _ope_rows(evaluation), "ope")
    return (
        f'<section id="ope"><h2>Off-policy evaluation</h2><p class="meta">{_h(caption)}</p>'
        + (f"<p>{_h(ope.message)}</p>" if ope.message else "")
        + f'{table}<p class="muted">SE: the candidate\'s standard error; on the SNIPS row, the paired '
        "error of the difference the gate weighs. ESS: the logged exposures the candidate's estimate "
        "is worth.</p></section>"
    )


def experiment_page(record: ExperimentRecord, report: Report, now_ms: int) -> str:
    """The page of one experiment from its report (control_plane/learning/report_types.py)."""
    spec = record.spec
    binary = report.binary
    key = spec.key

    def rate(v: float | None) -> str:
        return fmt.rate(v, binary)

    def diff(v: float | None) -> str:
        return fmt.diff(v, binary)

    arms = report.arms
    holdout = report.holdout
    meta = (
        f"version {record.version} · {len(spec.arms)} arms (default {spec.default_arm}) · "
        f"holdout {spec.holdout * 100:g}% · floor {spec.floor * 100:g}% · "
        f"segments by {', '.join(spec.features) or 'nothing (global only)'} · reward {spec.reward.kind} · "
        f"report at {fmt.utc(report.generated_ms)}"
    )
    report_href = f"/v1/experiments/{quote(key, safe='')}/report"
    parts = [
        f"<h1>{_h(key)}</h1>",
        f'<p class="meta">{_h(meta)} · <a href="{_h(report_href)}">JSON report</a></p>',
        _alerts_section(report.alerts),
        '<div class="grid">',
        '<section class="chart" id="allocation"><h2>Allocation over time</h2>'
        f"{allocation_chart(report.allocation_history, [a.arm for a in arms])}</section>",
        '<section class="chart" id="conversion"><h2>Conversion per arm</h2>'
        f"{conversion_chart(arms, report.reward_kind)}</section>",
        "</div>",
    ]
    arm_rows = [
        [
            a.arm,
            fmt.count(a.exposures),
            fmt.count(a.conversions),
            rate(a.rate),
            rate(a.posterior_mean),
            fmt.interval((a.ci_low, a.ci_high), rate),
            f"{a.prob_best:.3f}",
            fmt.share(a.allocation),
        ]
        for a in arms
    ]
    parts.append(
        '<section id="arms"><h2>Arms</h2>'
        + _table(
            [
                ("arm", False),
                ("exposures", True),
                ("conversions", True),
                ("rate", True),
                ("posterior mean", True),
                ("95% interval", True),
                ("P(best)", True),
                ("allocation", True),
            ],
            arm_rows,
            "arms",
        )
        + "</section>"
    )
    lift_text = f"Lift {diff(holdout.lift)} {fmt.interval(holdout.lift_ci, diff)}" + (
        f", relative {holdout.relative_lift * 100:+.1f}%" if holdout.relative_lift is not None else ""
    )
    parts.append(
        '<section class="chart" id="lift"><h2>Holdout lift</h2>'
        f"{lift_chart(holdout, report.reward_kind)}"
        f'<p class="lift">{_h(lift_text)}</p></section>'
    )
    segment_rows = [
        [
            seg.segment,
            _features(seg.features),
            fmt.count(seg.exposures),
            rate(seg.decomposition.personalized.rate),
            rate(seg.decomposition.holdout.rate),
            f"{diff(seg.decomposition.lift)} {fmt.interval(seg.decomposition.lift_ci, diff)}".strip(),
            _best_arm(seg.arms),
        ]
        for seg in report.segments
    ]
    segment_table = (
        _table(
            [
                ("segment", False),
                ("features", False),
                ("exposures", True),
                ("personalized", True),
                ("holdout", True),
                ("lift [95%]", True),
                ("best arm", False),
            ],
            segment_rows,
            "segments",
        )
        if segment_rows
        else '<p class="muted">No segment has exposures yet.</p>'
    )
    parts.append(f'<section id="segments"><h2>Segments</h2>{segment_table}</section>')
    effects = _effects_section(report.feature_effects)
    if effects:
        parts.append(effects)
    snapshot_rows = [
        [s.version, fmt.utc(s.created_ms), fmt.age(now_ms - s.created_ms), fmt.count(s.size)]
        for s in report.snapshots
    ]
    snapshot_table = (
        _table(
            [("version", True), ("published", False), ("age", True), ("bytes", True)],
            snapshot_rows,
            "snapshots",
        )
        if snapshot_rows
        else '<p class="muted">Never published.</p>'
    )
    parts.append(f'<section id="snapshots"><h2>Snapshots</h2>{snapshot_table}</section>')
    health_rows = [[f"outcomes {name}", fmt.count(n)] for name, n in report.outcomes.to_dict().items()]
    health_rows += [[name, fmt.count(value)] for name, value in sorted(report.counters.items())]
    parts.append(
        '<section id="data"><h2>Data</h2>'
        + _table([("", False), ("count", True)], health_rows, "data")
        + "</section>"
    )
    parts.append(_ope_section(report.ope))
    return _page(key, "".join(parts), logged_in=True)


# --- routes ----------------------------------------------------------------------------------


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
            last = self.store.snapshot_history(key, 1)
            rows.append(
                {
                    "key": key,
                    "version": record.version,
                    "arms": [a.key for a in record.spec.arms],
                    "max_age_s": record.spec.max_age_s,
                    "last_snapshot": (
                        {"version": last[0]["version"], "created_ms": last[0]["created_ms"]} if last else None
                    ),
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
        if not _same_origin(request):
            return self.html(_message_page("Forbidden", "Cross-site request refused.", logged_in=False), 403)
        form = await _form(request)
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
        if not _same_origin(request):
            return self.html(_message_page("Forbidden", "Cross-site request refused.", logged_in=False), 403)
        found = _session_nonce(self.settings, request.cookies.get(SESSION_COOKIE), self.now_ms())
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
                _message_page("Not found", f"There is no experiment {key!r}.", logged_in=True), 404
            )
        now = self.now_ms()
        report = await run_in_threadpool(self.report, self.store, record, now)
        return self.html(experiment_page(record, report, now))


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
