"""The parts every chart in charts.py is drawn with: the canvas and its plot area, colours,
coordinates, scales and ticks, the axis, the legend, and the empty chart.

Coordinates are written with at most two decimals and data values with six significant digits,
so the same data always gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any, Literal

from control_plane.http._format import Fmt, decimals

__all__ = [
    "AXIS",
    "BOTTOM",
    "EMPTY",
    "GRID",
    "HEIGHT",
    "LEFT",
    "RIGHT",
    "TEXT",
    "TOP",
    "WIDTH",
    "Tick",
    "arm_color",
    "axis",
    "coord",
    "datum",
    "decimate",
    "empty_chart",
    "esc",
    "legend",
    "nice_ticks",
    "scale",
    "short",
    "svg_open",
    "ticks",
    "time_ticks",
]

WIDTH, HEIGHT = 640, 320
# The plot area; the left margin holds tick labels, the right one the legend.
LEFT, RIGHT, TOP, BOTTOM = 64, 500, 36, 268
LEGEND_X = RIGHT + 16
LEGEND_ROWS = 12
EMPTY = "no data yet"

# Okabe-Ito: tells arms apart for the colour-blind too; past eight, golden-angle hues.
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
AXIS, GRID, TEXT = "#6b7280", "#e5e7eb", "#1f2937"
_FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif"


def arm_color(index: int) -> str:
    """The colour of the ``index``-th arm (or series), the same in every chart."""
    if index < len(_PALETTE):
        return _PALETTE[index]
    return f"hsl({(index * 137.508) % 360:.1f}, 55%, 45%)"


# --- numbers and text ------------------------------------------------------------------------


def coord(x: float) -> str:
    """A coordinate: two decimals are far below a pixel and keep the output short."""
    s = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def datum(x: float) -> str:
    """A data value, for data-* attributes."""
    return f"{x:.6g}"


def esc(text: Any) -> str:
    return escape(str(text), quote=True)


def short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 1)] + "…"


# --- scales and ticks ------------------------------------------------------------------------


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Ticks at 1, 2, 2.5 or 5 x 10^k spanning [lo, hi]; the first and last bound the axis."""
    if not hi > lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if raw <= m * magnitude * (1 + 1e-9))
    start = math.floor(lo / step + 1e-9) * step
    count = math.ceil(hi / step - 1e-9) - math.floor(lo / step + 1e-9)
    digits = decimals(step) + 1
    return [round(start + i * step, digits) + 0.0 for i in range(count + 1)]


_TIME_STEPS_S = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800,
    3600, 7200, 10800, 21600, 43200, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400,
)  # fmt: skip


def time_ticks(lo_ms: float, hi_ms: float) -> tuple[list[float], Fmt]:
    """UTC ticks at round seconds, minutes, hours or days, about five of them at most."""
    span_s = max((hi_ms - lo_ms) / 1000, 1.0)
    step = next((s for s in _TIME_STEPS_S if span_s / s <= 5), _TIME_STEPS_S[-1])
    first = math.ceil(lo_ms / 1000 / step) * step
    ticks = [float(t * 1000) for t in range(int(first), int(hi_ms / 1000) + 1, step)]
    pattern = "%H:%M:%S" if step < 60 else "%H:%M" if step < 86400 else "%m-%d"
    return ticks, lambda ms: datetime.fromtimestamp(ms / 1000, UTC).strftime(pattern)


def scale(d0: float, d1: float, r0: float, r1: float) -> Callable[[float], float]:
    span = (d1 - d0) or 1.0
    return lambda v: r0 + (v - d0) / span * (r1 - r0)


# --- building blocks -------------------------------------------------------------------------


def svg_open(kind: str, title: str, desc: str, *, empty: bool = False) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="perch-chart" data-chart="{kind}" '
        f'data-empty="{str(empty).lower()}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" role="img" font-family="{esc(_FONT)}" font-size="11" fill="{TEXT}">',
        f"<title>{esc(title)}</title>",
        f"<desc>{esc(desc)}</desc>",
        f'<text class="chart-title" x="{LEFT}" y="20" font-size="13" font-weight="600">'
        f"{esc(short(title, 80))}</text>",
    ]


def empty_chart(kind: str, title: str, message: str = EMPTY) -> str:
    parts = svg_open(kind, title, message, empty=True)
    parts += [
        f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{RIGHT - LEFT}" height="{BOTTOM - TOP}" '
        f'fill="#f9fafb" stroke="{GRID}"/>',
        f'<text class="empty" x="{coord((LEFT + RIGHT) / 2)}" y="{coord((TOP + BOTTOM) / 2)}" '
        f'text-anchor="middle" font-size="14" fill="{AXIS}">{esc(message)}</text>',
        "</svg>",
    ]
    return "".join(parts)


Tick = tuple[str, float, str]  # data-value, position along the axis (pixels), label


def ticks(values: Sequence[float], at: Callable[[float], float], label: Fmt) -> list[Tick]:
    """Numeric ticks: each value, where the scale puts it, and its label."""
    return [(datum(t), at(t), label(t)) for t in values]


def _line(x1: float, y1: float, x2: float, y2: float, *, stroke: str = AXIS, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return (
        f'<line{cls} x1="{coord(x1)}" y1="{coord(y1)}" x2="{coord(x2)}" y2="{coord(y2)}" stroke="{stroke}"/>'
    )


def axis(
    side: Literal["x", "y"],
    marks: Sequence[Tick],
    title: str,
    *,
    at: float,
    start: float = LEFT,
    grid: float | None = None,
    tick_marks: bool = True,
    gap: float = 16,
    title_at_end: bool = False,
) -> list[str]:
    """An axis (``<g class="axis x-axis">`` or y-axis): its line, one ``<g class="tick">`` per
    tick and its title.

    ``at``: where the line runs across the plot (an x-axis' y, a y-axis' x); an x-axis runs from
    ``start`` to RIGHT, a y-axis from TOP to BOTTOM.  ``grid``: where each tick's grid line ends
    across the plot (None: no grid).  ``tick_marks``: short lines outside the axis.  ``gap``: from
    an x-axis to its labels; its title goes a line lower, centred or (``title_at_end``) right-aligned.
    """
    if side == "y":
        out = ['<g class="axis y-axis">', _line(at, TOP, at, BOTTOM)]
        for key, pos, label in marks:
            out.append(
                f'<g class="tick" data-value="{esc(key)}">'
                + (_line(at, pos, grid, pos, stroke=GRID, css="grid") if grid is not None else "")
                + (_line(at - 4, pos, at, pos) if tick_marks else "")
                + f'<text x="{coord(at - 7)}" y="{coord(pos)}" dy="0.32em" text-anchor="end">'
                + f"{esc(label)}</text></g>"
            )
        mid = coord((TOP + BOTTOM) / 2)
        return [
            *out,
            f'<text class="axis-label" transform="rotate(-90)" x="-{mid}" y="14" text-anchor="middle">'
            f"{esc(title)}</text></g>",
        ]
    out = ['<g class="axis x-axis">', _line(start, at, RIGHT, at)]
    for key, pos, label in marks:
        out.append(
            f'<g class="tick" data-value="{esc(key)}">'
            + (_line(pos, grid, pos, at, stroke=GRID, css="grid") if grid is not None else "")
            + (_line(pos, at, pos, at + 4) if tick_marks else "")
            + f'<text x="{coord(pos)}" y="{coord(at + gap)}" text-anchor="middle">{esc(label)}</text></g>'
        )
    x, anchor = (RIGHT, "end") if title_at_end else ((LEFT + RIGHT) / 2, "middle")
    title_y = at + gap + (14 if title_at_end else 18)
    return [
        *out,
        f'<text class="axis-label" x="{coord(x)}" y="{coord(title_y)}" text-anchor="{anchor}">'
        f"{esc(title)}</text></g>",
    ]


def _swatch(shape: str, color: str, y: float) -> str:
    if shape == "line":
        return (
            f'<line x1="{LEGEND_X}" y1="{y + 6}" x2="{LEGEND_X + 12}" y2="{y + 6}" '
            f'stroke="{color}" stroke-width="2"/>'
        )
    if shape == "whisker":
        return (
            f'<path d="M{LEGEND_X + 6},{y} V{y + 12} M{LEGEND_X + 3},{y} H{LEGEND_X + 9} '
            f'M{LEGEND_X + 3},{y + 12} H{LEGEND_X + 9}" stroke="{color}" stroke-width="1.5" fill="none"/>'
        )
    if shape == "dot":
        return f'<circle cx="{LEGEND_X + 6}" cy="{y + 6}" r="4" fill="{color}"/>'
    return f'<rect x="{LEGEND_X}" y="{y}" width="12" height="12" rx="2" fill="{color}"/>'


def _more(row: int, hidden: int) -> str:
    return (
        f'<text class="legend-more" x="{LEGEND_X}" y="{TOP + 10 + row * 18}" dy="0.32em" '
        f'fill="{AXIS}">+{hidden} more</text>'
    )


def legend(items: Sequence[tuple[str, str, str]], fixed: Sequence[tuple[str, str, str]] = ()) -> list[str]:
    """Rows of (name, colour, swatch: rect | line | dot | whisker): ``items`` first, as many
    as fit (then a count of the rest), ``fixed`` always, last."""
    room = LEGEND_ROWS - len(fixed)
    shown = list(items) if len(items) <= room else list(items[: room - 1])
    hidden = len(items) - len(shown)
    out = ['<g class="legend">']
    row = 0
    for name, color, shape in [*shown, *fixed]:
        if row == len(shown) and hidden:
            out.append(_more(row, hidden))
            row += 1
        y = TOP + 4 + row * 18
        out.append(
            f'<g class="legend-item" data-legend="{esc(name)}">{_swatch(shape, color, y)}'
            f'<text x="{LEGEND_X + 18}" y="{y + 6}" dy="0.32em">{esc(short(name, 16))}</text></g>'
        )
        row += 1
    if hidden and not fixed:
        out.append(_more(row, hidden))
    out.append("</g>")
    return out


def decimate(points: list[tuple[float, float]], x: Callable[[float], float]) -> list[tuple[float, float]]:
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
