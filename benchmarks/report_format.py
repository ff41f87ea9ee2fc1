"""Formatting shared by the sections of benchmarks/RESULTS.md: Markdown tables, numbers, verdicts,
and the lookup of pytest-benchmark's figures."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks.shapes import HEADLINE

__all__ = [
    "HEAD",
    "HEAD_LABEL",
    "core_index",
    "median_us",
    "ms",
    "num",
    "p",
    "ratio",
    "shape",
    "table",
]

HEAD = "{}x{}".format(*HEADLINE)
HEAD_LABEL = f"{HEADLINE[0]} arms x {HEADLINE[1]} segments"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "—"
    if abs(x) >= 100 and digits <= 1:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def ms(us: float | None) -> str:
    return "—" if us is None else f"{us / 1000:.3f}"


def ms_unit(us: float | None) -> str:
    return "not measured" if us is None else f"{us / 1000:.3f} ms"


def shape(key: str) -> str:
    arms, segments = key.split("x")
    return f"{arms} x {segments}"


def p(summary: dict[str, Any] | None, key: str) -> float | None:
    """A percentile of a latency summary; None where nothing was measured."""
    return None if not summary or not summary.get("n") else summary.get(key)


def core_index(core: dict[str, Any]) -> dict[tuple[str, int | None, int | None], dict[str, Any]]:
    """pytest-benchmark's results by (kind, arms, segments)."""
    out = {}
    for b in core.get("benchmarks", []):
        info = b["extra_info"]
        key = (info.get("kind", b["name"]), info.get("arms"), info.get("segments"))
        if info.get("kind") == "generator":
            key = (f"generator.{info['generator']}", info.get("arms"), None)
        out[key] = {**b["stats"], **info}
    return out


def median_us(
    index: dict[Any, Any], kind: str, arms: int | None = None, segments: int | None = None
) -> float | None:
    entry = index.get((kind, arms, segments))
    return None if entry is None else entry["median"] * 1e6


def ratio(peer: float | None, perch: float | None) -> float | None:
    return None if peer is None or perch is None or perch == 0 else peer / perch
