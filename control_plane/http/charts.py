"""Server-side SVG charts for the dashboard and the demo: no JavaScript, no external assets.

Each chart is one standalone ``<svg>`` (viewBox, width and height, an accessible ``<title>``
and ``<desc>``) with axes, ticks, axis labels and a legend.  Its marks carry the class
``mark`` and ``data-*`` attributes (``data-arm``, ``data-value`` ...), so tests and a browser
can check what was drawn, not just that something was.  All text is escaped and the output
depends only on the input (same data, same bytes), so pages and files can be compared.
Without data a chart says "no data yet" rather than drawing empty axes.  The parts they are
drawn with (canvas, axes, legend) are in ``_svg.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from control_plane.http import _format as fmt
from control_plane.http._format import Fmt
from control_plane.http._svg import (
    AXIS,
    BOTTOM,
    LEFT,
    RIGHT,
    TEXT,
    TOP,
    arm_color,
    axis,
    coord,
    datum,
    decimate,
    empty_chart,
    esc,
    legend,
    nice_ticks,
    scale,
    short,
    svg_open,
    ticks,
    time_ticks,
)
from control_plane.learning.report_types import AllocationPoint, ArmRow, Decomposition, Group

__all__ = ["allocation_chart", "arm_color", "conversion_chart", "lift_chart", "line_chart"]

_HOLDOUT = "#9ca3af"

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
        return empty_chart("allocation", title)
    names = list(dict.fromkeys(arms))
    names += sorted({k for _, _, shares in points for k in shares} - set(names))
    latest = points[-1]
    desc = (
        f"{len(names)} arms over {len(points)} snapshots up to version {latest[1]}; latest shares: "
        + ", ".join(f"{n} {latest[2].get(n, 0.0) * 100:.1f}%" for n in names)
    )
    parts = svg_open("allocation", title, desc)
    y = scale(0.0, 1.0, BOTTOM, TOP)
    y_ticks = [0.0, 0.25, 0.5, 0.75, 1.0]
    parts += axis(
        "y", ticks(y_ticks, y, fmt.percent_ticks(y_ticks)), "share of decisions", at=LEFT, grid=RIGHT
    )

    t0, t1 = points[0][0], points[-1][0]
    single = t1 == t0
    if single:
        # One snapshot (or several at one instant): a stacked bar, since an area needs a span.
        points = points[-1:]
        x = scale(t0 - 1, t0 + 1, LEFT, RIGHT)
        x_ticks, x_fmt = [t0], time_ticks(t0, t0)[1]
    else:
        x = scale(t0, t1, LEFT, RIGHT)
        x_ticks, x_fmt = time_ticks(t0, t1)
    parts += axis("x", ticks(x_ticks, x, x_fmt), f"snapshot time (UTC, from {fmt.utc(t0)[:10]})", at=BOTTOM)
    parts += _stacked_areas(points, names, x, y, single=single)
    if not single and len(points) <= 100:
        # Where each snapshot took over: faint rules, so uneven publishing shows.
        parts.append('<g class="snapshots">')
        for t, version, _ in points:
            parts.append(
                f'<line class="snapshot" data-version="{version}" x1="{coord(x(t))}" y1="{TOP}" '
                f'x2="{coord(x(t))}" y2="{BOTTOM}" stroke="#ffffff" stroke-opacity="0.7"/>'
            )
        parts.append("</g>")
    parts += legend([(n, arm_color(i), "rect") for i, n in enumerate(names)])
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
            f'class="mark area" data-arm="{esc(name)}" data-value="{datum(shares[-1])}" '
            f'data-values="{",".join(datum(s) for s in shares)}" data-points="{len(points)}" '
            f'fill="{arm_color(i)}" fill-opacity="0.85"'
        )
        tip = f"<title>{esc(name)}: {shares[-1] * 100:.1f}% in version {points[-1][1]}</title>"
        if single:
            cx = x(points[0][0])
            parts.append(
                f'<rect {common} x="{coord(cx - 24)}" y="{coord(y(upper[0]))}" width="48" '
                f'height="{coord(y(lower[0]) - y(upper[0]))}">{tip}</rect>'
            )
        else:
            top_edge = [f"{coord(x(p[0]))},{coord(y(u))}" for p, u in zip(points, upper, strict=True)]
            bottom_edge = [f"{coord(x(p[0]))},{coord(y(lo))}" for p, lo in zip(points, lower, strict=True)]
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
    if not any(a.exposures > 0 for a in arms):
        return empty_chart("conversion", title)
    names = list(dict.fromkeys(a.arm for a in arms))
    top = max(max(a.rate or 0.0, a.ci_high, a.posterior_mean) for a in arms)
    y_ticks = nice_ticks(0.0, max(top * 1.1, 1e-3 if binary else 1e-6))
    y_fmt = fmt.percent_ticks(y_ticks) if binary else fmt.number_ticks(y_ticks)
    y = scale(0.0, y_ticks[-1], BOTTOM, TOP)

    def value(v: float | None) -> str:
        return "no rate" if v is None else fmt.rate(v, binary)

    desc = "; ".join(f"{a.arm}: {value(a.rate)} over {a.exposures:g} exposures" for a in arms)
    parts = svg_open("conversion", title, desc)
    y_label = "conversion rate" if binary else "mean reward"
    parts += axis("y", ticks(y_ticks, y, y_fmt), y_label, at=LEFT, grid=RIGHT)
    band = (RIGHT - LEFT) / len(arms)
    every = max(1, math.ceil(len(arms) / 12))  # a label per arm while twelve fit
    arm_ticks = [
        (name, LEFT + band * (i + 0.5), short(name, max(int(band * every / 7), 3)))
        for i, name in enumerate(names)
        if i % every == 0
    ]
    parts += axis("x", arm_ticks, "arm (whiskers: 95% interval)", at=BOTTOM, tick_marks=False)
    parts.append('<g class="marks">')
    width = min(band * 0.6, 56.0)
    for i, row in enumerate(arms):
        parts += _arm_marks(
            row, LEFT + band * (i + 0.5), width, arm_color(names.index(row.arm)), y=y, value=value
        )
    parts.append("</g>")
    parts += legend(
        [(n, arm_color(i), "rect") for i, n in enumerate(names)],
        [("95% interval", TEXT, "whisker"), ("posterior mean", TEXT, "dot")],
    )
    parts.append("</svg>")
    return "".join(parts)


def _arm_marks(
    row: ArmRow, cx: float, width: float, color: str, *, y: Callable[[float], float], value: Fmt
) -> list[str]:
    """One arm of the conversion chart: its bar (with a rate), whisker and posterior mean."""
    name, rate, lo, hi = esc(row.arm), row.rate, row.ci_low, row.ci_high
    tip = esc(
        f"{row.arm}: {'no rate yet' if rate is None else value(rate)} (95% {value(lo)} to {value(hi)}), "
        f"{row.exposures:,.0f} exposures"
    )
    cap = min(width / 3, 8.0)
    left, right = coord(cx - cap), coord(cx + cap)
    parts = (
        []
        if rate is None
        else [
            f'<rect class="mark bar" data-arm="{name}" data-value="{datum(rate)}" '
            f'data-exposures="{datum(row.exposures)}" x="{coord(cx - width / 2)}" y="{coord(y(rate))}" '
            f'width="{coord(width)}" height="{coord(BOTTOM - y(rate))}" fill="{color}" fill-opacity="0.8">'
            f"<title>{tip}</title></rect>"
        ]
    )
    return [
        *parts,
        f'<path class="mark ci" data-arm="{name}" data-low="{datum(lo)}" data-high="{datum(hi)}" '
        f'd="M{coord(cx)},{coord(y(lo))} V{coord(y(hi))} M{left},{coord(y(lo))} H{right} '
        f'M{left},{coord(y(hi))} H{right}" stroke="{TEXT}" stroke-width="1.5" '
        f'fill="none"><title>{tip}</title></path>',
        f'<circle class="mark mean" data-arm="{name}" data-value="{datum(row.posterior_mean)}" '
        f'cx="{coord(cx)}" cy="{coord(y(row.posterior_mean))}" r="3" fill="{TEXT}"/>',
    ]


def lift_chart(holdout: Decomposition, reward_kind: str = "binary") -> str:
    """Personalized versus holdout rate (bars), and the lift between them with its 95 % interval.

    The lift panel is centred on zero so an interval straddling it reads as "not shown yet".
    """
    binary = reward_kind == "binary"
    title = "Personalized versus holdout"
    groups = [("personalized", holdout.personalized, arm_color(0)), ("holdout", holdout.holdout, _HOLDOUT)]
    if not any(g.exposures > 0 for _, g, _ in groups):
        return empty_chart("lift", title)
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
    parts = svg_open("lift", title, f"{desc}; {summary}")
    parts += _rate_panel(groups, binary, value)
    parts += _lift_panel(lift, lo, hi, summary, binary)
    parts += legend(
        [("personalized", arm_color(0), "rect"), ("holdout", _HOLDOUT, "rect"), ("lift", arm_color(5), "dot")]
    )
    parts.append("</svg>")
    return "".join(parts)


_LABEL_X, _BAR_X = LEFT + 34, LEFT + 40  # the lift chart's row labels end at one, bars start at the other


def _rate_panel(groups: Sequence[tuple[str, Group, str]], binary: bool, value: Fmt) -> list[str]:
    """The top of the lift chart: both groups' rates as bars on one axis."""
    rates = [g.rate for _, g, _ in groups if g.rate is not None]
    x_ticks = nice_ticks(0.0, max(max(rates or [0.0]) * 1.1, 1e-3 if binary else 1e-6), 4)
    tick_fmt = fmt.percent_ticks(x_ticks) if binary else fmt.number_ticks(x_ticks)
    x = scale(0.0, x_ticks[-1], _BAR_X, RIGHT)
    label = "conversion rate" if binary else "mean reward"
    marks = ticks(x_ticks, x, tick_fmt)
    parts = axis(
        "x", marks, label, at=124, start=_BAR_X, grid=TOP + 4, tick_marks=False, gap=15, title_at_end=True
    )
    parts.append('<g class="marks">')
    for i, (name, group, color) in enumerate(groups):
        row_y = TOP + 10 + i * 38
        rate, exposures = group.rate, group.exposures
        parts.append(
            f'<text x="{_LABEL_X}" y="{row_y + 12}" dy="0.32em" text-anchor="end">{esc(name)}</text>'
        )
        if rate is None:
            parts.append(
                f'<text class="no-rate" x="{_BAR_X + 6}" y="{row_y + 12}" dy="0.32em" fill="{AXIS}">'
                "no exposures yet</text>"
            )
            continue
        tip = f"{name}: {value(rate)} over {exposures:,.0f} exposures"
        parts.append(
            f'<rect class="mark bar" data-group="{name}" data-value="{datum(rate)}" '
            f'data-exposures="{datum(exposures)}" x="{_BAR_X}" y="{row_y}" '
            f'width="{coord(max(x(rate) - _BAR_X, 0.5))}" height="24" fill="{color}">'
            f"<title>{esc(tip)}</title></rect>"
            f'<text x="{coord(x(rate) + 5)}" y="{row_y + 12}" dy="0.32em">{esc(value(rate))}</text>'
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
            f'<text class="summary" x="{_BAR_X}" y="{axis_y - 30}" fill="{AXIS}">'
            f"{esc(summary)} (needs exposures in both groups)</text>"
        ]
    bound = max(abs(v) for v in (lift, lo, hi) if v is not None) * 1.15 or (0.01 if binary else 0.1)
    x_ticks = nice_ticks(-bound, bound, 6)
    tick_fmt = fmt.points_ticks(x_ticks) if binary else fmt.number_ticks(x_ticks)
    x = scale(x_ticks[0], x_ticks[-1], _BAR_X, RIGHT)
    row_y = axis_y - 36
    label = "lift (percentage points)" if binary else "lift"
    parts = axis("x", ticks(x_ticks, x, tick_fmt), label, at=axis_y, start=_BAR_X, gap=15, title_at_end=True)
    parts += [
        f'<line class="zero" x1="{coord(x(0))}" y1="{row_y - 22}" x2="{coord(x(0))}" y2="{axis_y}" '
        f'stroke="{AXIS}" stroke-dasharray="3 3"/>',
        f'<text x="{_LABEL_X}" y="{row_y}" dy="0.32em" text-anchor="end">lift</text>',
        '<g class="marks">',
    ]
    if lo is not None and hi is not None:
        parts.append(
            f'<path class="mark ci" data-group="lift" data-low="{datum(lo)}" data-high="{datum(hi)}" '
            f'd="M{coord(x(lo))},{row_y} H{coord(x(hi))} M{coord(x(lo))},{row_y - 6} V{row_y + 6} '
            f'M{coord(x(hi))},{row_y - 6} V{row_y + 6}" stroke="{TEXT}" stroke-width="1.5" fill="none"/>'
        )
    parts += [
        f'<circle class="mark point" data-group="lift" data-value="{datum(lift)}" cx="{coord(x(lift))}" '
        f'cy="{row_y}" r="5" fill="{arm_color(5)}"><title>{esc(summary)}</title></circle>',
        "</g>",
        f'<text class="summary" x="{_BAR_X}" y="{row_y - 16}">{esc(summary)}</text>',
    ]
    return parts


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
        return empty_chart("line", title)
    xs = [p[0] for pts in cleaned.values() for p in pts]
    ys = [p[1] for pts in cleaned.values() for p in pts]
    x_ticks = nice_ticks(min(xs), max(xs))
    y_ticks = nice_ticks(min(*ys, 0.0), max(*ys, 0.0))
    x = scale(x_ticks[0], x_ticks[-1], LEFT, RIGHT)
    y = scale(y_ticks[0], y_ticks[-1], BOTTOM, TOP)
    desc = "; ".join(
        f"{name}: {len(pts)} points" + (f", last ({pts[-1][0]:g}, {pts[-1][1]:g})" if pts else "")
        for name, pts in cleaned.items()
    )
    parts = svg_open("line", title, desc)
    parts += axis("y", ticks(y_ticks, y, fmt.number_ticks(y_ticks)), y_label, at=LEFT, grid=RIGHT)
    parts += axis("x", ticks(x_ticks, x, fmt.number_ticks(x_ticks)), x_label, at=BOTTOM)
    parts.append('<g class="marks">')
    for i, (name, pts) in enumerate(cleaned.items()):
        if not pts:
            continue
        color = arm_color(i)
        drawn = decimate(pts, x)
        attrs = (
            f'data-series="{esc(name)}" data-points="{len(pts)}" data-value="{datum(pts[-1][1])}" '
            f'data-x="{datum(pts[-1][0])}"'
        )
        if len(drawn) > 1:
            d = "M" + " L".join(f"{coord(x(px))},{coord(y(py))}" for px, py in drawn)
            parts.append(
                f'<path class="mark line" {attrs} d="{d}" fill="none" stroke="{color}" '
                f'stroke-width="2" stroke-linejoin="round"><title>{esc(name)}</title></path>'
            )
        if len(pts) <= 60:
            for px, py in pts:
                parts.append(
                    f'<circle class="mark point" data-series="{esc(name)}" data-x="{datum(px)}" '
                    f'data-value="{datum(py)}" cx="{coord(x(px))}" cy="{coord(y(py))}" r="2.5" '
                    f'fill="{color}"/>'
                )
    parts.append("</g>")
    parts += legend([(name, arm_color(i), "line") for i, name in enumerate(cleaned)])
    parts.append("</svg>")
    return "".join(parts)
