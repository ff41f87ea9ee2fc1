"""How the dashboard and its charts write numbers, shares and times, so a rate reads the same in
a table cell, a chart's tooltip and its axis.

Rates of binary rewards are percentages and their differences percentage points; numeric rewards
keep their own unit with four significant digits.  ``None`` (a rate without exposures, a lift
without both groups) is a dash.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

__all__ = [
    "DASH",
    "Fmt",
    "age",
    "count",
    "decimals",
    "diff",
    "interval",
    "number_ticks",
    "percent_ticks",
    "points_ticks",
    "rate",
    "share",
    "utc",
]

DASH = "—"

Fmt = Callable[[float], str]


def rate(value: float | None, binary: bool) -> str:
    if value is None:
        return DASH
    return f"{value * 100:.2f}%" if binary else f"{value:.4g}"


def diff(value: float | None, binary: bool) -> str:
    """A difference of rates: percentage points for binary rewards."""
    if value is None:
        return DASH
    return f"{value * 100:+.2f} pp" if binary else f"{value:+.4g}"


def share(value: float | None) -> str:
    return DASH if value is None else f"{value * 100:.1f}%"


def count(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def interval(ci: tuple[float, float] | None, fmt: Fmt) -> str:
    return "" if ci is None else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def utc(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(ms: float) -> str:
    s = max(ms, 0) / 1000
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


# --- axis ticks: as many decimals as the step between ticks needs -----------------------------


def decimals(step: float) -> int:
    """How many decimals show every multiple of ``step`` exactly."""
    for d in range(10):
        scaled = abs(step) * 10**d
        if abs(scaled - round(scaled)) < 1e-6 * max(scaled, 1.0):
            return d
    return 10


def number_ticks(ticks: Sequence[float]) -> Fmt:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    d = decimals(step)
    return lambda v: f"{v:,.{d}f}"


def percent_ticks(ticks: Sequence[float]) -> Fmt:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 0.01
    d = decimals(step * 100)
    return lambda v: f"{v * 100:.{d}f}%"


def points_ticks(ticks: Sequence[float]) -> Fmt:
    """Differences of rates, in percentage points."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 0.01
    d = decimals(step * 100)
    return lambda v: f"{v * 100:+.{d}f}" if v else "0"
