"""The SVG charts, parsed back as XML: what they draw, where, and with which values."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace

import pytest

from control_plane.http._svg import BOTTOM, EMPTY, LEFT, RIGHT, TOP
from control_plane.http.charts import allocation_chart, arm_color, conversion_chart, lift_chart, line_chart
from control_plane.learning.report_types import AllocationPoint, ArmRow, Decomposition, Group
from tests.factories import NOW

NS = "{http://www.w3.org/2000/svg}"
MINUTE = 60_000
EVIL = "<script>alert('x')</script> & \"quoted\""


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


def marks(root: ET.Element, **data: str) -> list[ET.Element]:
    """Elements with class ``mark`` whose data-* attributes match ``data``."""
    return [
        e
        for e in root.iter()
        if "mark" in (e.get("class") or "").split()
        and all(e.get(f"data-{k.replace('_', '-')}") == v for k, v in data.items())
    ]


def floats(element: ET.Element, name: str) -> list[float]:
    return [float(v) for v in (element.get(name) or "").split(",")]


def path_points(d: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"(-?[\d.]+),(-?[\d.]+)", d)]


def tick_labels(root: ET.Element, axis: str) -> list[str]:
    (group,) = [g for g in root.iter(f"{NS}g") if g.get("class") == f"axis {axis}"]
    return [t.findtext(f"{NS}text") or "" for t in group.iter(f"{NS}g") if t.get("class") == "tick"]


def arm(name: str, exposures: int, rate: float | None, mean: float, low: float, high: float) -> ArmRow:
    reward = (rate or 0.0) * exposures
    return ArmRow(name, exposures, round(reward), reward, rate, mean, low, high, 0.5, None)


HISTORY = [
    AllocationPoint(v, NOW + v * MINUTE, {"a": 0.6 - 0.1 * v, "b": 0.4 + 0.1 * v}) for v in range(1, 5)
]
ARMS = [arm("a", 400, 0.05, 0.0525, 0.033, 0.075), arm("b", 500, 0.1, 0.1, 0.076, 0.12)]
HOLDOUT = Decomposition(Group(900, 70.0, 0.08), Group(100, 5.0, 0.05), 0.03, (-0.01, 0.07), 0.6)
NO_EXPOSURES = Group(0, 0.0, None)
SERIES = {
    "Perch": [(i, 2 * math.log1p(i)) for i in range(0, 101, 10)],
    "uniform": [(i, 0.2 * i) for i in range(101)],
}

CHARTS: dict[str, Callable[[], str]] = {
    "allocation": lambda: allocation_chart(HISTORY, ["a", "b"]),
    "conversion": lambda: conversion_chart(ARMS),
    "lift": lambda: lift_chart(HOLDOUT),
    "line": lambda: line_chart(SERIES, "Cumulative regret", "conversions lost", x_label="visits"),
}


@pytest.mark.parametrize("kind", sorted(CHARTS))
def test_every_chart_has_a_viewbox_title_axes_legend_and_marks(kind: str) -> None:
    svg = CHARTS[kind]()
    assert svg == CHARTS[kind]()  # deterministic: same data, same bytes
    root = parse(svg)
    assert root.get("viewBox") == "0 0 640 320" and root.get("role") == "img"
    assert (root.get("data-chart"), root.get("data-empty")) == (kind, "false")
    assert (root.findtext(f"{NS}title") or "").strip() and (root.findtext(f"{NS}desc") or "").strip()
    axes = [g for g in root.iter(f"{NS}g") if (g.get("class") or "").startswith("axis")]
    assert axes
    for axis in axes:
        ticks = [g for g in axis.iter(f"{NS}g") if g.get("class") == "tick"]
        assert len(ticks) >= 2 and all((t.findtext(f"{NS}text") or "").strip() for t in ticks)
        assert any(t.get("class") == "axis-label" for t in axis.iter(f"{NS}text"))
    legend = [g for g in root.iter(f"{NS}g") if g.get("class") == "legend-item"]
    assert len(legend) >= 2 and all(g.findtext(f"{NS}text") for g in legend)
    assert marks(root)


@pytest.mark.parametrize(
    ("kind", "svg"),
    [
        ("allocation", lambda: allocation_chart([], ["a", "b"])),
        ("allocation", lambda: allocation_chart([AllocationPoint(1, NOW, {"a": 0.0})], [])),
        ("conversion", lambda: conversion_chart([])),
        ("conversion", lambda: conversion_chart([replace(ARMS[0], exposures=0)])),
        ("lift", lambda: lift_chart(Decomposition(NO_EXPOSURES, NO_EXPOSURES, None, None, None))),
        ("line", lambda: line_chart({}, "t", "y")),
        ("line", lambda: line_chart({"a": [], "b": [(math.nan, 1.0), (1.0, math.inf)]}, "t", "y")),
    ],
)
def test_without_data_a_chart_says_so(kind: str, svg: Callable[[], str]) -> None:
    root = parse(svg())
    assert (root.get("data-chart"), root.get("data-empty")) == (kind, "true")
    assert [t.text for t in root.iter(f"{NS}text") if t.get("class") == "empty"] == [EMPTY]
    assert root.findtext(f"{NS}title") and root.get("viewBox") == "0 0 640 320"
    assert marks(root) == []


def test_allocation_stacks_each_arms_share_in_time_order() -> None:
    shuffled = [HISTORY[2], HISTORY[0], HISTORY[3], HISTORY[1]]
    root = parse(allocation_chart(shuffled, ["a", "b"]))
    a, b = marks(root, arm="a"), marks(root, arm="b")
    assert len(a) == len(b) == 1
    assert floats(a[0], "data-values") == pytest.approx([0.5, 0.4, 0.3, 0.2])
    assert floats(b[0], "data-values") == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert float(b[0].get("data-value", "nan")) == pytest.approx(0.8)
    assert (a[0].get("fill"), b[0].get("fill")) == (arm_color(0), arm_color(1))
    # a sits on the axis, b on top of it and reaches 100% everywhere.
    a_points, b_points = path_points(a[0].get("d", "")), path_points(b[0].get("d", ""))
    height = BOTTOM - TOP
    assert [y for _, y in a_points[4:]] == [BOTTOM] * 4
    assert [y for _, y in a_points[:4]] == pytest.approx([BOTTOM - s * height for s in (0.5, 0.4, 0.3, 0.2)])
    assert [y for _, y in b_points[:4]] == [TOP] * 4
    xs = [x for x, _ in a_points[:4]]
    assert xs == sorted(xs) and xs[0] < xs[-1]
    assert [
        line.get("data-version") for line in root.iter(f"{NS}line") if line.get("class") == "snapshot"
    ] == [
        "1",
        "2",
        "3",
        "4",
    ]


def test_allocation_normalises_and_keeps_arms_missing_from_the_list() -> None:
    history = [
        AllocationPoint(1, NOW, {"a": 0.2, "b": 0.2}),
        AllocationPoint(2, NOW + MINUTE, {"a": 0.25, "b": 0.25, "new": 0.5}),
    ]
    root = parse(allocation_chart(history, ["b", "a"]))
    order = [m.get("data-arm") for m in marks(root)]
    assert order == ["b", "a", "new"]  # the given order first, then what only the history has
    values = {m.get("data-arm"): floats(m, "data-values") for m in marks(root)}
    assert values == {"b": [0.5, 0.25], "a": [0.5, 0.25], "new": [0.0, 0.5]}
    legend = [g.get("data-legend") for g in root.iter(f"{NS}g") if g.get("class") == "legend-item"]
    assert legend == ["b", "a", "new"]


def test_allocation_time_axis_is_utc_at_round_minutes() -> None:
    root = parse(allocation_chart(HISTORY, ["a", "b"]))
    # NOW is 2026-05-28 20:26:40 UTC; the snapshots are 20:27:40 .. 20:30:40.
    assert tick_labels(root, "x-axis") == ["20:28", "20:29", "20:30"]
    assert tick_labels(root, "y-axis") == ["0%", "25%", "50%", "75%", "100%"]
    assert any("2026-05-28" in (t.text or "") for t in root.iter(f"{NS}text"))


def test_one_snapshot_is_a_stacked_bar() -> None:
    root = parse(allocation_chart(HISTORY[:1], ["a", "b"]))
    bars = marks(root)
    assert [b.tag for b in bars] == [f"{NS}rect", f"{NS}rect"]
    heights = [float(b.get("height", "nan")) for b in bars]
    assert heights == pytest.approx([0.5 * (BOTTOM - TOP)] * 2, abs=0.01)
    assert all(float(b.get("width", "0")) > 0 for b in bars)


def test_conversion_bars_are_rates_with_interval_whiskers() -> None:
    root = parse(conversion_chart(ARMS))
    bars = {m.get("data-arm"): m for m in marks(root) if m.get("class") == "mark bar"}
    assert {k: float(v.get("data-value", "nan")) for k, v in bars.items()} == {"a": 0.05, "b": 0.1}
    heights = {k: float(v.get("height", "nan")) for k, v in bars.items()}
    assert heights["b"] == pytest.approx(2 * heights["a"], abs=0.02)
    whiskers = {
        m.get("data-arm"): (m.get("data-low"), m.get("data-high"))
        for m in marks(root)
        if "ci" in m.get("class", "")
    }
    assert whiskers == {"a": ("0.033", "0.075"), "b": ("0.076", "0.12")}
    assert [m.get("data-value") for m in marks(root) if "mean" in m.get("class", "")] == ["0.0525", "0.1"]
    # The axis reaches past the highest interval, in percent.
    assert tick_labels(root, "y-axis") == ["0%", "5%", "10%", "15%"]
    assert [t.findtext(f"{NS}text") for t in root.iter(f"{NS}g") if t.get("class") == "tick"][-2:] == [
        "a",
        "b",
    ]


def test_conversion_leaves_out_what_it_does_not_know() -> None:
    rows = [ARMS[0], arm("b", 0, None, 0.3, 0.01, 0.6)]
    root = parse(conversion_chart(rows))
    assert [m.get("data-arm") for m in marks(root) if m.get("class") == "mark bar"] == ["a"]
    assert [m.get("data-arm") for m in marks(root) if m.get("class") == "mark ci"] == ["a", "b"]
    numeric = parse(conversion_chart(ARMS, reward_kind="numeric"))
    assert "%" not in "".join(tick_labels(numeric, "y-axis"))
    assert numeric.findtext(f"{NS}title") == "Mean reward per arm"


def test_lift_shows_both_rates_and_the_lift_interval_around_zero() -> None:
    root = parse(lift_chart(HOLDOUT))
    bars = {m.get("data-group"): m for m in marks(root) if m.tag == f"{NS}rect"}
    assert {k: float(v.get("data-value", "nan")) for k, v in bars.items()} == {
        "personalized": 0.08,
        "holdout": 0.05,
    }
    widths = {k: float(v.get("width", "nan")) for k, v in bars.items()}
    assert widths["personalized"] == pytest.approx(widths["holdout"] * 0.08 / 0.05, abs=0.02)
    (ci,) = marks(root, group="lift", low="-0.01", high="0.07")
    (point,) = [m for m in marks(root, group="lift") if m.tag == f"{NS}circle"]
    assert point.get("data-value") == "0.03"
    (zero,) = [line for line in root.iter(f"{NS}line") if line.get("class") == "zero"]
    ends = re.match(r"M(-?[\d.]+),[\d.]+ H(-?[\d.]+)", ci.get("d", ""))
    assert ends is not None
    low_x, high_x = float(ends.group(1)), float(ends.group(2))
    assert low_x < float(zero.get("x1", "nan")) < float(point.get("cx", "nan")) < high_x
    summary = [t.text for t in root.iter(f"{NS}text") if t.get("class") == "summary"]
    assert summary == ["lift +3.00 pp (95% -1.00 pp to +7.00 pp), relative +60.0%"]


def test_lift_without_holdout_exposures_shows_rates_but_no_lift() -> None:
    root = parse(lift_chart(Decomposition(Group(10, 1.0, 0.1), NO_EXPOSURES, None, None, None)))
    assert [m.get("data-group") for m in marks(root)] == ["personalized"]
    assert any("not measurable yet" in (t.text or "") for t in root.iter(f"{NS}text"))
    assert any(t.text == "no exposures yet" for t in root.iter(f"{NS}text"))


def test_line_chart_draws_each_series_with_its_last_value() -> None:
    root = parse(line_chart(SERIES, "Cumulative regret", "conversions lost", x_label="visits"))
    lines = {m.get("data-series"): m for m in marks(root) if m.tag == f"{NS}path"}
    assert set(lines) == {"Perch", "uniform"}
    assert (
        lines["uniform"].get("data-points") == "101"
        and float(lines["uniform"].get("data-value", "0")) == 20.0
    )
    assert len(path_points(lines["Perch"].get("d", ""))) == 11
    # Few points get dots as well; the uniform series has too many for that.
    assert len([m for m in marks(root, series="Perch") if m.tag == f"{NS}circle"]) == 11
    assert not [m for m in marks(root, series="uniform") if m.tag == f"{NS}circle"]
    assert tick_labels(root, "y-axis")[0] == "0" and tick_labels(root, "x-axis")[-1] == "100"
    labels = [t.text for t in root.iter(f"{NS}text") if t.get("class") == "axis-label"]
    assert labels == ["conversions lost", "visits"]


def test_line_chart_keeps_big_series_small_but_exact_at_the_ends() -> None:
    n = 100_000
    root = parse(line_chart({"walk": [(i, math.sin(i / 500) * i) for i in range(n)]}, "t", "y"))
    (line,) = [m for m in marks(root) if m.tag == f"{NS}path"]
    points = path_points(line.get("d", ""))
    assert line.get("data-points") == str(n) and len(points) <= 4 * 440
    assert float(line.get("data-value", "nan")) == pytest.approx(math.sin((n - 1) / 500) * (n - 1), rel=1e-5)
    lowest = min(math.sin(i / 500) * i for i in range(n))
    (y_axis,) = [g for g in root.iter(f"{NS}g") if g.get("class") == "axis y-axis"]
    assert (
        float(next(g for g in y_axis.iter(f"{NS}g") if g.get("class") == "tick").get("data-value", "0"))
        <= lowest
    )
    assert all(LEFT <= x <= RIGHT and TOP <= y <= BOTTOM for x, y in points)


def test_single_points_and_constant_series_still_draw() -> None:
    root = parse(line_chart({"one": [(5, 3.0)], "flat": [(0, 0.0), (10, 0.0)]}, "t", "y"))
    assert [m.get("data-series") for m in marks(root) if m.tag == f"{NS}circle"] == ["one", "flat", "flat"]
    assert parse(line_chart({"zero": [(1, 0.0)]}, "t", "y")).get("data-empty") == "false"


def test_text_is_escaped_everywhere() -> None:
    svgs = [
        line_chart({EVIL: [(0, 1.0), (1, 2.0)]}, EVIL, EVIL, x_label=EVIL),
        allocation_chart([AllocationPoint(1, NOW, {EVIL: 1.0})], [EVIL]),
        conversion_chart([replace(ARMS[0], arm=EVIL)]),
    ]
    for svg in svgs:
        assert "<script" not in svg
        root = parse(svg)
        assert all(e.tag.startswith(NS) and "script" not in e.tag for e in root.iter())
        texts = [e.get("data-series") or e.get("data-arm") for e in marks(root)]
        assert EVIL in texts
    assert parse(svgs[0]).findtext(f"{NS}title") == EVIL


def test_many_arms_get_distinct_colours_and_a_legend_that_fits() -> None:
    names = [f"arm-{i}" for i in range(30)]
    history = [AllocationPoint(1, NOW, dict.fromkeys(names, 1 / 30))]
    root = parse(allocation_chart(history, names))
    assert len({m.get("fill") for m in marks(root)}) == 30
    legend = [g for g in root.iter(f"{NS}g") if g.get("class") == "legend-item"]
    more = [t.text for t in root.iter(f"{NS}text") if t.get("class") == "legend-more"]
    assert len(legend) == 11 and more == ["+19 more"]
    ys = [float(t.get("y", "0")) for g in legend for t in g.iter(f"{NS}text")]
    assert max(ys) < BOTTOM
