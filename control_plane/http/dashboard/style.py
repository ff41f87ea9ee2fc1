"""How dashboard pages look and what they may do: the stylesheet, the security headers that allow
only it, and the HTML helpers (escaping, tables, the page frame) every section is built with."""

from __future__ import annotations

import hashlib
from base64 import b64encode
from collections.abc import Sequence
from html import escape
from typing import Any

__all__ = ["CSS", "HEADERS", "Html", "h", "page", "table"]

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


class Html(str):
    """Markup built here from escaped parts; every other string is escaped when rendered."""


def h(value: Any) -> str:
    return value if isinstance(value, Html) else escape(str(value), quote=True)


def table(head: Sequence[tuple[str, bool]], rows: Sequence[Sequence[Any]], css: str = "") -> Html:
    """``head``: (title, numeric?) per column; cells are escaped unless they are :class:`Html`."""
    numeric = [n for _, n in head]
    th = "".join(f'<th{" class=num" if n else ""} scope="col">{h(t)}</th>' for t, n in head)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if n else ''}>{h(c)}</td>" for c, n in zip(row, numeric, strict=True))
        + "</tr>"
        for row in rows
    )
    return Html(f'<table class="{h(css)}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>')


def page(title: str, body: str, *, logged_in: bool) -> str:
    logout = (
        '<form method="post" action="/logout"><button type="submit">Log out</button></form>'
        if logged_in
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{h(title)} · Perch</title><style>{CSS}</style></head>'
        f'<body><header><a href="/">Perch control plane</a>{logout}</header><main>{body}</main></body></html>'
    )
