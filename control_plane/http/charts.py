"""Server-side SVG charts for the dashboard and the demo: no JavaScript, no external assets.

Each chart is one standalone ``<svg>`` (viewBox, width and height, an accessible ``<title>``
and ``<desc>``) with axes, ticks, axis labels and a legend.  Its marks carry the class
``mark`` and ``data-*`` attributes (``data-arm``, ``data-value`` ...), so tests and a browser
can check what was drawn, not just that something was.  All text is escaped and the output
depends only on the input (same data, same bytes), so pages and files can be compared.
Without data a chart says "no data yet" rather than drawing empty axes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from control_plane.http import _format as fmt
from control_plane.http._format import Fmt
from control_plane.learning.report_types import AllocationPoint, ArmRow, Decomposition, Group

__all__ = ["arm_color", "allocation_chart", "conversion_chart", "lift_chart", "line_chart"]

WIDTH, HEIGHT = 640, 320
# The plot area; the left margin holds tick labels, the right one the legend.
LEFT, RIGHT, TOP, BOTTOM = 64, 500, 36, 268
LEGEND_X = RIGHT + 16
LEGEND_ROWS = 12
EMPTY = "no data yet"

# Okabe-Ito: tells arms apart for the colour-blind too; past eight, golden-angle hues.
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
_AXIS, _GRID, _MUTED, _TEXT = "#6b7280", "#e5e7eb", "#9ca3af", "#1f2937"
_HOLDOUT = "#9ca3af"
_FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif"


def arm_color(index: int) -> str:
    """The colour of the ``index``-th arm (or series), the same in every chart."""
    if index < len(_PALETTE):
        return _PALETTE[index]
    return f"hsl({(index * 137.508) % 360:.1f}, 55%, 45%)"


# --- numbers and text ------------------------------------------------------------------------


def _c(x: float) -> str:
    """A coordinate: two decimals are far below a pixel and keep the output short."""
    s = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def _v(x: float) -> str:
    """A data value, for data-* attributes."""
    return f"{x:.6g}"


def _e(text: Any) -> str:
    return escape(str(text), quote=True)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 1)] + "…"


def _nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Ticks at 1, 2, 2.5 or 5 x 10^k spanning [lo, hi]; the first and last bound the axis."""
    if not hi > lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if raw <= m * magnitude * (1 + 1e-9))
    start = math.floor(lo / step + 1e-9) * step
    count = math.ceil(hi / step - 1e-9) - math.floor(lo / step + 1e-9)
    digits = fmt.decimals(step) + 1
    return [round(start + i * step, digits) + 0.0 for i in range(count + 1)]


_TIME_STEPS_S = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800,
    3600, 7200, 10800, 21600, 43200, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400,
)  # fmt: skip


def _time_ticks(lo_ms: float, hi_ms: float) -> tuple[list[float], Fmt]:
    """UTC ticks at round seconds, minutes, hours or days, about five of them at most."""
    span_s = max((hi_ms - lo_ms) / 1000, 1.0)
    step = next((s for s in _TIME_STEPS_S if span_s / s <= 5), _TIME_STEPS_S[-1])
    first = math.ceil(lo_ms / 1000 / step) * step
    ticks = [float(t * 1000) for t in range(int(first), int(hi_ms / 1000) + 1, step)]
    pattern = "%H:%M:%S" if step < 60 else "%H:%M" if step < 86400 else "%m-%d"
    return ticks, lambda ms: datetime.fromtimestamp(ms / 1000, UTC).strftime(pattern)


def _scale(d0: float, d1: float, r0: float, r1: float) -> Callable[[float], float]:
    span = (d1 - d0) or 1.0
    return lambda v: r0 + (v - d0) / span * (r1 - r0)


# --- building blocks -------------------------------------------------------------------------


def _open(kind: str, title: str, desc: str, *, empty: bool = False) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="perch-chart" data-chart="{kind}" '
        f'data-empty="{str(empty).lower()}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" role="img" font-family="{_e(_FONT)}" font-size="11" fill="{_TEXT}">',
        f"<title>{_e(title)}</title>",
        f"<desc>{_e(desc)}</desc>",
        f'<text class="chart-title" x="{LEFT}" y="20" font-size="13" font-weight="600">'
        f"{_e(_short(title, 80))}</text>",
    ]


def _empty(kind: str, title: str, message: str = EMPTY) -> str:
    parts = _open(kind, title, message, empty=True)
    parts += [
        f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{RIGHT - LEFT}" height="{BOTTOM - TOP}" '
        f'fill="#f9fafb" stroke="{_GRID}"/>',
        f'<text class="empty" x="{_c((LEFT + RIGHT) / 2)}" y="{_c((TOP + BOTTOM) / 2)}" '
        f'text-anchor="middle" font-size="14" fill="{_AXIS}">{_e(message)}</text>',
        "</svg>",
    ]
    return "".join(parts)


def _y_axis(ticks: Sequence[float], y: Callable[[float], float], fmt: Fmt, label: str) -> list[str]:
    out = [
        '<g class="axis y-axis">',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{BOTTOM}" stroke="{_AXIS}"/>',
    ]
    for t in ticks:
        ty = _c(y(t))
        out.append(
            f'<g class="tick" data-value="{_v(t)}">'
            f'<line class="grid" x1="{LEFT}" y1="{ty}" x2="{RIGHT}" y2="{ty}" stroke="{_GRID}"/>'
            f'<line x1="{LEFT - 4}" y1="{ty}" x2="{LEFT}" y2="{ty}" stroke="{_AXIS}"/>'
            f'<text x="{LEFT - 7}" y="{ty}" dy="0.32em" text-anchor="end">{_e(fmt(t))}</text></g>'
        )
    mid = _c((TOP + BOTTOM) / 2)
    out.append(
        f'<text class="axis-label" transform="rotate(-90)" x="-{mid}" y="14" text-anchor="middle">'
        f"{_e(label)}</text></g>"
    )
    return out


def _x_axis(
    ticks: Sequence[float], x: Callable[[float], float], fmt: Fmt, label: str, *, y: float = BOTTOM
) -> list[str]:
    out = [
        '<g class="axis x-axis">',
        f'<line x1="{LEFT}" y1="{_c(y)}" x2="{RIGHT}" y2="{_c(y)}" stroke="{_AXIS}"/>',
    ]
    for t in ticks:
        tx = _c(x(t))
        out.append(
            f'<g class="tick" data-value="{_v(t)}">'
            f'<line x1="{tx}" y1="{_c(y)}" x2="{tx}" y2="{_c(y + 4)}" stroke="{_AXIS}"/>'
            f'<text x="{tx}" y="{_c(y + 16)}" text-anchor="middle">{_e(fmt(t))}</text></g>'
        )
    out.append(
        f'<text class="axis-label" x="{_c((LEFT + RIGHT) / 2)}" y="{_c(y + 34)}" text-anchor="middle">'
        f"{_e(label)}</text></g>"
    )
    return out


def _legend(items: Sequence[tuple[str, str, str]], fixed: Sequence[tuple[str, str, str]] = ()) -> list[str]:
    """Rows of (name, colour, swatch: rect | line | dot | whisker): ``items`` first, as many
    as fit (then a count of the rest), ``fixed`` always, last."""
    room = LEGEND_ROWS - len(fixed)
    shown = list(items) if len(items) <= room else list(items[: room - 1])
    out = ['<g class="legend">']
    row = 0
    for name, color, shape in [*shown, *fixed]:
        if row == len(shown) and len(shown) < len(items):
            out.append(
                f'<text class="legend-more" x="{LEGEND_X}" y="{TOP + 10 + row * 18}" dy="0.32em" '
                f'fill="{_AXIS}">+{len(items) - len(shown)} more</text>'
            )
            row += 1
        y = TOP + 4 + row * 18
        if shape == "line":
            swatch = (
                f'<line x1="{LEGEND_X}" y1="{y + 6}" x2="{LEGEND_X + 12}" y2="{y + 6}" '
                f'stroke="{color}" stroke-width="2"/>'
            )
        elif shape == "whisker":
            swatch = (
                f'<path d="M{LEGEND_X + 6},{y} V{y + 12} M{LEGEND_X + 3},{y} H{LEGEND_X + 9} '
                f'M{LEGEND_X + 3},{y + 12} H{LEGEND_X + 9}" stroke="{color}" stroke-width="1.5" fill="none"/>'
            )
        elif shape == "dot":
            swatch = f'<circle cx="{LEGEND_X + 6}" cy="{y + 6}" r="4" fill="{color}"/>'
        else:
            swatch = f'<rect x="{LEGEND_X}" y="{y}" width="12" height="12" rx="2" fill="{color}"/>'
        out.append(
            f'<g class="legend-item" data-legend="{_e(name)}">{swatch}'
            f'<text x="{LEGEND_X + 18}" y="{y + 6}" dy="0.32em">{_e(_short(name, 16))}</text></g>'
        )
        row += 1
    if len(shown) < len(items) and not fixed:
        out.append(
            f'<text class="legend-more" x="{LEGEND_X}" y="{TOP + 10 + row * 18}" dy="0.32em" '
            f'fill="{_AXIS}">+{len(items) - len(shown)} more</text>'
        )
    out.append("</g>")
    return out


# --- charts ----------------------------------------------------------------------------------


Snapshot = tuple[float, int, dict[str, float]]  # created_ms, version, normalised shares


def _allocation_points(history: Sequence[AllocationPoint]) -> list[Snapshot]:
    points: list[Snapshot] = []
    for entry in history:
        total = sum(entry.allocation.values())
        if total > 0:
            normalised = {k: p / total for k, p in entry.allocation.items()}
            points.append((entry.created_ms, entry.version, normalised))
    points.sort(key=lambda p: (p[0], p[1]))
    return points


def allocation_chart(history: Sequence[AllocationPoint], arms: Sequence[str]) -> str:
    """Stacked areas: each arm's share of the global allocation, snapshot by snapshot.

    ``history`` in any order; ``arms`` fixes stacking order and colours; arms found only in the
    history come after, sorted.  Shares are normalised per snapshot, so float32 rounding in a
    snapshot cannot overshoot 100 %.
    """
    title = "Allocation share per arm over time"
    points = _allocation_points(history)
    if not points:
        return _empty("allocation", title)
    names = list(dict.fromkeys(arms))
    names += sorted({k for _, _, shares in points for k in shares} - set(names))
    latest = points[-1]
    desc = (
        f"{len(names)} arms over {len(points)} snapshots up to version {latest[1]}; latest shares: "
        + ", ".join(f"{n} {latest[2].get(n, 0.0) * 100:.1f}%" for n in names)
    )
    parts = _open("allocation", title, desc)
    y = _scale(0.0, 1.0, BOTTOM, TOP)
    y_ticks = [0.0, 0.25, 0.5, 0.75, 1.0]
    parts += _y_axis(y_ticks, y, fmt.percent_ticks(y_ticks), "share of decisions")

    t0, t1 = points[0][0], points[-1][0]
    single = t1 == t0
    if single:
        # One snapshot (or several at one instant): a stacked bar, since an area needs a span.
        points = points[-1:]
        x = _scale(t0 - 1, t0 + 1, LEFT, RIGHT)
        x_ticks, x_fmt = [t0], _time_ticks(t0, t0)[1]
    else:
        x = _scale(t0, t1, LEFT, RIGHT)
        x_ticks, x_fmt = _time_ticks(t0, t1)
    parts += _x_axis(x_ticks, x, x_fmt, f"snapshot time (UTC, from {fmt.utc(t0)[:10]})")
    parts += _stacked_areas(points, names, x, y, single=single)
    if not single and len(points) <= 100:
        # Where each snapshot took over: faint rules, so uneven publishing shows.
        parts.append('<g class="snapshots">')
        for t, version, _ in points:
            parts.append(
                f'<line class="snapshot" data-version="{version}" x1="{_c(x(t))}" y1="{TOP}" '
                f'x2="{_c(x(t))}" y2="{BOTTOM}" stroke="#ffffff" stroke-opacity="0.7"/>'
            )
        parts.append("</g>")
    parts += _legend([(n, arm_color(i), "rect") for i, n in enumerate(names)])
    parts.append("</svg>")
    return "".join(parts)


def _stacked_areas(
    points: Sequence[Snapshot],
    names: Sequence[str],
    x: Callable[[float], float],
    y: Callable[[float], float],
    *,
    single: bool,
) -> list[str]:
    parts = ['<g class="marks">']
    lower = [0.0] * len(points)
    for i, name in enumerate(names):
        shares = [p[2].get(name, 0.0) for p in points]
        upper = [lo + s for lo, s in zip(lower, shares, strict=True)]
        common = (
            f'class="mark area" data-arm="{_e(name)}" data-value="{_v(shares[-1])}" '
            f'data-values="{",".join(_v(s) for s in shares)}" data-points="{len(points)}" '
            f'fill="{arm_color(i)}" fill-opacity="0.85"'
        )
        tip = f"<title>{_e(name)}: {shares[-1] * 100:.1f}% in version {points[-1][1]}</title>"
        if single:
            cx = x(points[0][0])
            parts.append(
                f'<rect {common} x="{_c(cx - 24)}" y="{_c(y(upper[0]))}" width="48" '
                f'height="{_c(y(lower[0]) - y(upper[0]))}">{tip}</rect>'
            )
        else:
            top_edge = [f"{_c(x(p[0]))},{_c(y(u))}" for p, u in zip(points, upper, strict=True)]
            bottom_edge = [f"{_c(x(p[0]))},{_c(y(lo))}" for p, lo in zip(points, lower, strict=True)]
            d = "M" + " L".join(top_edge + bottom_edge[::-1]) + " Z"
            parts.append(f'<path {common} d="{d}">{tip}</path>')
        lower = upper
    parts.append("</g>")
    return parts


def conversion_chart(arms: Sequence[ArmRow], reward_kind: str = "binary") -> str:
    """Per arm: observed rate (bar), 95 % posterior interval (whisker) and posterior mean (dot).

    An arm without exposures has no rate, so no bar: its interval and mean are the prior's.
    """
    binary = reward_kind == "binary"
    title = "Conversion rate per arm" if binary else "Mean reward per arm"
    rows = list(arms)
    if not any(a.exposures > 0 for a in rows):
        return _empty("conversion", title)
    names = list(dict.fromkeys(a.arm for a in rows))
    top = max(max(a.rate or 0.0, a.ci_high, a.posterior_mean) for a in rows)
    y_ticks = _nice_ticks(0.0, max(top * 1.1, 1e-3 if binary else 1e-6))
    y_fmt = fmt.percent_ticks(y_ticks) if binary else fmt.number_ticks(y_ticks)
    y = _scale(0.0, y_ticks[-1], BOTTOM, TOP)

    def value(v: float) -> str:
        return fmt.rate(v, binary)

    desc = "; ".join(
        f"{a.arm}: "
        + (value(a.rate) if a.rate is not None else "no rate")
        + f" over {a.exposures:g} exposures"
        for a in rows
    )
    parts = _open("conversion", title, desc)
    parts += _y_axis(y_ticks, y, y_fmt, "conversion rate" if binary else "mean reward")
    band = (RIGHT - LEFT) / len(rows)
    width = min(band * 0.6, 56.0)
    label_every = max(1, math.ceil(len(rows) / 12))
    parts.append('<g class="axis x-axis">')
    parts.append(f'<line x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}" stroke="{_AXIS}"/>')
    for i, name in enumerate(names):
        if i % label_every == 0:
            tx = _c(LEFT + band * (i + 0.5))
            parts.append(
                f'<g class="tick" data-value="{_e(name)}"><text x="{tx}" y="{BOTTOM + 16}" '
                f'text-anchor="middle">{_e(_short(name, max(int(band * label_every / 7), 3)))}</text></g>'
            )
    parts.append(
        f'<text class="axis-label" x="{_c((LEFT + RIGHT) / 2)}" y="{BOTTOM + 34}" text-anchor="middle">'
        "arm (whiskers: 95% interval)</text></g>"
    )
    parts.append('<g class="marks">')
    for i, row in enumerate(rows):
        name = row.arm
        color = arm_color(names.index(name))
        cx = LEFT + band * (i + 0.5)
        rate, mean, lo, hi, exposures = row.rate, row.posterior_mean, row.ci_low, row.ci_high, row.exposures
        tip = f"{name}: " + (value(rate) if rate is not None else "no rate yet")
        tip += f" (95% {value(lo)} to {value(hi)}), {exposures:,.0f} exposures"
        if rate is not None:
            parts.append(
                f'<rect class="mark bar" data-arm="{_e(name)}" data-value="{_v(rate)}" '
                f'data-exposures="{_v(exposures)}" x="{_c(cx - width / 2)}" y="{_c(y(rate))}" '
                f'width="{_c(width)}" height="{_c(BOTTOM - y(rate))}" fill="{color}" fill-opacity="0.8">'
                f"<title>{_e(tip)}</title></rect>"
            )
        cap = min(width / 3, 8.0)
        parts.append(
            f'<path class="mark ci" data-arm="{_e(name)}" data-low="{_v(lo)}" data-high="{_v(hi)}" '
            f'd="M{_c(cx)},{_c(y(lo))} V{_c(y(hi))} M{_c(cx - cap)},{_c(y(lo))} H{_c(cx + cap)} '
            f'M{_c(cx - cap)},{_c(y(hi))} H{_c(cx + cap)}" stroke="{_TEXT}" stroke-width="1.5" '
            f'fill="none"><title>{_e(tip)}</title></path>'
        )
        parts.append(
            f'<circle class="mark mean" data-arm="{_e(name)}" data-value="{_v(mean)}" '
            f'cx="{_c(cx)}" cy="{_c(y(mean))}" r="3" fill="{_TEXT}"/>'
        )
    parts.append("</g>")
    parts += _legend(
        [(n, arm_color(i), "rect") for i, n in enumerate(names)],
        [("95% interval", _TEXT, "whisker"), ("posterior mean", _TEXT, "dot")],
    )
    parts.append("</svg>")
    return "".join(parts)


def lift_chart(holdout: Decomposition, reward_kind: str = "binary") -> str:
    """Personalized versus holdout rate (bars), and the lift between them with its 95 % interval.

    The lift panel is centred on zero so an interval straddling it reads as "not shown yet".
    """
    binary = reward_kind == "binary"
    title = "Personalized versus holdout"
    groups = [("personalized", holdout.personalized, arm_color(0)), ("holdout", holdout.holdout, _HOLDOUT)]
    if not any(g.exposures > 0 for _, g, _ in groups):
        return _empty("lift", title)
    lift, relative = holdout.lift, holdout.relative_lift
    lo, hi = holdout.lift_ci or (None, None)

    def value(v: float) -> str:
        return fmt.rate(v, binary)

    def diff(v: float) -> str:
        return fmt.diff(v, binary)

    summary = "lift " + (diff(lift) if lift is not None else "not measurable yet")
    if lift is not None and lo is not None and hi is not None:
        summary += f" (95% {diff(lo)} to {diff(hi)})"
    if relative is not None:
        summary += f", relative {relative * 100:+.1f}%"
    desc = "; ".join(
        f"{n}: " + (value(g.rate) if g.rate is not None else "no rate") + f" over {g.exposures:g} exposures"
        for n, g, _ in groups
    )
    parts = _open("lift", title, f"{desc}; {summary}")
    parts += _rate_panel(groups, binary, value)
    parts += _lift_panel(lift, lo, hi, summary, binary)
    parts += _legend(
        [("personalized", arm_color(0), "rect"), ("holdout", _HOLDOUT, "rect"), ("lift", arm_color(5), "dot")]
    )
    parts.append("</svg>")
    return "".join(parts)


_LABEL_X, _BAR_X = LEFT + 34, LEFT + 40  # the lift chart's row labels end at one, bars start at the other


def _rate_panel(groups: Sequence[tuple[str, Group, str]], binary: bool, value: Fmt) -> list[str]:
    """The top of the lift chart: both groups' rates as bars on one axis."""
    rates = [g.rate for _, g, _ in groups if g.rate is not None]
    ticks = _nice_ticks(0.0, max(max(rates or [0.0]) * 1.1, 1e-3 if binary else 1e-6), 4)
    tick_fmt = fmt.percent_ticks(ticks) if binary else fmt.number_ticks(ticks)
    x = _scale(0.0, ticks[-1], _BAR_X, RIGHT)
    axis_y = 124
    parts = [
        '<g class="axis x-axis">',
        f'<line x1="{_BAR_X}" y1="{axis_y}" x2="{RIGHT}" y2="{axis_y}" stroke="{_AXIS}"/>',
    ]
    for t in ticks:
        tx = _c(x(t))
        parts.append(
            f'<g class="tick" data-value="{_v(t)}">'
            f'<line class="grid" x1="{tx}" y1="{TOP + 4}" x2="{tx}" y2="{axis_y}" stroke="{_GRID}"/>'
            f'<text x="{tx}" y="{axis_y + 15}" text-anchor="middle">{_e(tick_fmt(t))}</text></g>'
        )
    parts.append(
        f'<text class="axis-label" x="{RIGHT}" y="{axis_y + 29}" text-anchor="end">'
        f"{'conversion rate' if binary else 'mean reward'}</text></g>"
    )
    parts.append('<g class="marks">')
    for i, (name, group, color) in enumerate(groups):
        row_y = TOP + 10 + i * 38
        rate, exposures = group.rate, group.exposures
        parts.append(f'<text x="{_LABEL_X}" y="{row_y + 12}" dy="0.32em" text-anchor="end">{_e(name)}</text>')
        if rate is None:
            parts.append(
                f'<text class="no-rate" x="{_BAR_X + 6}" y="{row_y + 12}" dy="0.32em" fill="{_AXIS}">'
                "no exposures yet</text>"
            )
            continue
        tip = f"{name}: {value(rate)} over {exposures:,.0f} exposures"
        parts.append(
            f'<rect class="mark bar" data-group="{name}" data-value="{_v(rate)}" '
            f'data-exposures="{_v(exposures)}" x="{_BAR_X}" y="{row_y}" '
            f'width="{_c(max(x(rate) - _BAR_X, 0.5))}" height="24" fill="{color}">'
            f"<title>{_e(tip)}</title></rect>"
            f'<text x="{_c(x(rate) + 5)}" y="{row_y + 12}" dy="0.32em">{_e(value(rate))}</text>'
        )
    parts.append("</g>")
    return parts


def _lift_panel(
    lift: float | None, lo: float | None, hi: float | None, summary: str, binary: bool
) -> list[str]:
    """The bottom of the lift chart: the lift and its interval, on an axis centred on zero."""
    axis_y = BOTTOM - 8
    if lift is None:
        return [
            f'<text class="summary" x="{_BAR_X}" y="{axis_y - 30}" fill="{_AXIS}">'
            f"{_e(summary)} (needs exposures in both groups)</text>"
        ]
    bound = max(abs(v) for v in (lift, lo, hi) if v is not None) * 1.15 or (0.01 if binary else 0.1)
    ticks = _nice_ticks(-bound, bound, 6)
    tick_fmt = fmt.points_ticks(ticks) if binary else fmt.number_ticks(ticks)
    x = _scale(ticks[0], ticks[-1], _BAR_X, RIGHT)
    row_y = axis_y - 36
    parts = [
        '<g class="axis x-axis">',
        f'<line x1="{_BAR_X}" y1="{axis_y}" x2="{RIGHT}" y2="{axis_y}" stroke="{_AXIS}"/>',
    ]
    for t in ticks:
        tx = _c(x(t))
        parts.append(
            f'<g class="tick" data-value="{_v(t)}">'
            f'<line x1="{tx}" y1="{axis_y}" x2="{tx}" y2="{axis_y + 4}" stroke="{_AXIS}"/>'
            f'<text x="{tx}" y="{axis_y + 15}" text-anchor="middle">{_e(tick_fmt(t))}</text></g>'
        )
    parts += [
        f'<text class="axis-label" x="{RIGHT}" y="{axis_y + 29}" text-anchor="end">'
        f"{'lift (percentage points)' if binary else 'lift'}</text></g>",
        f'<line class="zero" x1="{_c(x(0))}" y1="{row_y - 22}" x2="{_c(x(0))}" y2="{axis_y}" '
        f'stroke="{_AXIS}" stroke-dasharray="3 3"/>',
        f'<text x="{_LABEL_X}" y="{row_y}" dy="0.32em" text-anchor="end">lift</text>',
        '<g class="marks">',
    ]
    if lo is not None and hi is not None:
        parts.append(
            f'<path class="mark ci" data-group="lift" data-low="{_v(lo)}" data-high="{_v(hi)}" '
            f'd="M{_c(x(lo))},{row_y} H{_c(x(hi))} M{_c(x(lo))},{row_y - 6} V{row_y + 6} '
            f'M{_c(x(hi))},{row_y - 6} V{row_y + 6}" stroke="{_TEXT}" stroke-width="1.5" fill="none"/>'
        )
    parts += [
        f'<circle class="mark point" data-group="lift" data-value="{_v(lift)}" cx="{_c(x(lift))}" '
        f'cy="{row_y}" r="5" fill="{arm_color(5)}"><title>{_e(summary)}</title></circle>',
        "</g>",
        f'<text class="summary" x="{_BAR_X}" y="{row_y - 16}">{_e(summary)}</text>',
    ]
    return parts


def _decimate(points: list[tuple[float, float]], x: Callable[[float], float]) -> list[tuple[float, float]]:
    """At most first, lowest, highest and last point per pixel column: the drawn line is the
    same, but a 100,000-point series stays a few kilobytes."""
    if len(points) <= 4 * (RIGHT - LEFT):
        return points
    out: list[tuple[float, float]] = []
    column: list[tuple[float, float]] = []
    current: int | None = None
    for p in [*points, (math.inf, 0.0)]:
        col = int(x(p[0])) if math.isfinite(p[0]) else None
        if col != current and column:
            keep = [column[0], min(column, key=lambda q: q[1]), max(column, key=lambda q: q[1]), column[-1]]
            out += sorted(dict.fromkeys(keep), key=column.index)
            column = []
        current = col
        column.append(p)
    return out


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]], title: str, y_label: str, *, x_label: str = ""
) -> str:
    """One line per named series of (x, y) points, e.g. cumulative regret per policy.

    Points are sorted by x; non-finite ones are dropped.  The y axis always includes zero.
    """
    cleaned: dict[str, list[tuple[float, float]]] = {}
    for name, pts in series.items():
        ok = sorted((float(px), float(py)) for px, py in pts if math.isfinite(px) and math.isfinite(py))
        cleaned[str(name)] = ok
    if not any(cleaned.values()):
        return _empty("line", title)
    xs = [p[0] for pts in cleaned.values() for p in pts]
    ys = [p[1] for pts in cleaned.values() for p in pts]
    x_ticks = _nice_ticks(min(xs), max(xs))
    y_ticks = _nice_ticks(min(*ys, 0.0), max(*ys, 0.0))
    x = _scale(x_ticks[0], x_ticks[-1], LEFT, RIGHT)
    y = _scale(y_ticks[0], y_ticks[-1], BOTTOM, TOP)
    desc = "; ".join(
        f"{name}: {len(pts)} points" + (f", last ({pts[-1][0]:g}, {pts[-1][1]:g})" if pts else "")
        for name, pts in cleaned.items()
    )
    parts = _open("line", title, desc)
    parts += _y_axis(y_ticks, y, fmt.number_ticks(y_ticks), y_label)
    parts += _x_axis(x_ticks, x, fmt.number_ticks(x_ticks), x_label)
    parts.append('<g class="marks">')
    for i, (name, pts) in enumerate(cleaned.items()):
        if not pts:
            continue
        color = arm_color(i)
        drawn = _decimate(pts, x)
        attrs = (
            f'data-series="{_e(name)}" data-points="{len(pts)}" data-value="{_v(pts[-1][1])}" '
            f'data-x="{_v(pts[-1][0])}"'
        )
        if len(drawn) > 1:
            d = "M" + " L".join(f"{_c(x(px))},{_c(y(py))}" for px, py in drawn)
            parts.append(
                f'<path class="mark line" {attrs} d="{d}" fill="none" stroke="{color}" '
                f'stroke-width="2" stroke-linejoin="round"><title>{_e(name)}</title></path>'
            )
        if len(pts) <= 60:
            for px, py in pts:
                parts.append(
                    f'<circle class="mark point" data-series="{_e(name)}" data-x="{_v(px)}" '
                    f'data-value="{_v(py)}" cx="{_c(x(px))}" cy="{_c(y(py))}" r="2.5" fill="{color}"/>'
                )
    parts.append("</g>")
    parts += _legend([(name, arm_color(i), "line") for i, name in enumerate(cleaned)])
    parts.append("</svg>")
    return "".join(parts)
