"""``benchmarks/RESULTS.md`` from the figures of one ``benchmarks.run``: the frame (machine,
headline, missed targets) here, each section's tables in a report_* module of its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks import bench_clickhouse, bench_consume, bench_profiles
from benchmarks.report_core import core_section
from benchmarks.report_format import HEAD, HEAD_LABEL, core_index, median_us, ms, num, p, ratio, table
from benchmarks.report_learning import learner_section, learning_section, learning_verdicts
from benchmarks.report_pyodide import pyodide_section
from benchmarks.report_serving import http_section, ingest_section
from benchmarks.shapes import HEADLINE, SHAPES
from benchmarks.targets import TARGETS

__all__ = ["render"]

Row = tuple[str, str, str, str]  # figure, measured, target, verdict ("" where there is no target)

_RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "core": core_section,
    "pyodide": pyodide_section,
    "learner": learner_section,
    "learning": learning_section,
    "ingest": ingest_section,
    "consume": bench_consume.section,
    "clickhouse": bench_clickhouse.section,
    "profiles": bench_profiles.section,
    "http": http_section,
}


def contextual_verdicts(ctx: dict[str, Any] | None) -> list[Row]:
    """The contextual model's Pyodide targets: warm decide, decode + decide, whole fetch."""
    if not ctx:
        return []
    label = f"{ctx['arms']} arms, {ctx['features']} features, {ctx['columns']} columns"
    measured = {
        "warm": p(ctx["decide"], "p99_us"),
        "cold": p(ctx["cold"], "p99_us"),
        "fetch": p(ctx["fetch"]["fetch"], "p99_us"),
    }
    figures = {
        "warm": f"Pyodide contextual warm decision p99 ({label})",
        "cold": f"Pyodide contextual decode + decide p99 ({label})",
        "fetch": f"Pyodide contextual `Default.fetch` p99 ({label})",
    }
    return [
        _target_row(figures[k], f"{ms(v)} ms", f"pyodide.contextual.{k}_p99_us", v)
        for k, v in measured.items()
    ]


def _target_row(figure: str, measured: str, target: str, value: float | None) -> Row:
    return (figure, measured, TARGETS[target].text, TARGETS[target].verdict(value))


def _pyodide_rows(py: dict[str, Any]) -> list[Row]:
    warm = p(py["decide"].get(HEAD), "p99_us")
    cold = p(py["cold"].get(HEAD), "p99_us")
    fetch = p(py["fetch"].get(HEAD, {}).get("fetch"), "p99_us")
    st = p(py["fetch"].get(HEAD, {}).get("server_timing"), "p99_us")
    return [
        _target_row(
            f"Pyodide warm decision p99 ({HEAD_LABEL})", f"{ms(warm)} ms", "pyodide.warm_p99_us", warm
        ),
        _target_row(f"Pyodide cold path p99 ({HEAD_LABEL})", f"{ms(cold)} ms", "pyodide.cold_p99_us", cold),
        _target_row(
            f"Pyodide `Default.fetch` p99 ({HEAD_LABEL})", f"{ms(fetch)} ms", "pyodide.fetch_p99_us", fetch
        ),
        ("Pyodide Server-Timing p99 of those requests", f"{ms(st)} ms", "—", ""),
        *_hydration_rows(py.get("profiles")),
        *contextual_verdicts(py.get("contextual")),
        *_ranked_rows(py.get("ranked")),
    ]


def _ranked_rows(ranked: dict[str, Any] | None) -> list[Row]:
    if not ranked:
        return []
    v = p(ranked["decide"], "p99_us")
    label = f"{ranked['slots']} of {ranked['items']} items, {ranked['segments']} segments"
    return [
        _target_row(
            f"Pyodide ranked warm decision p99 ({label})", f"{ms(v)} ms", "pyodide.ranked.decide_p99_us", v
        )
    ]


def _hydration_rows(profiles: dict[str, Any] | None) -> list[Row]:
    """What reading each visitor's profile adds to a request: p99 with it less p99 without."""
    if not profiles:
        return []
    off, hit = p(profiles["off"]["fetch"], "p99_us"), p(profiles["hit"]["fetch"], "p99_us")
    overhead = None if off is None or hit is None else hit - off
    return [
        _target_row(
            f"Pyodide profile hydration p99 overhead ({HEAD_LABEL}; `Default.fetch` p99 {ms(hit)} ms "
            f"with a profile read per visitor, {ms(off)} ms without)",
            f"{ms(overhead)} ms",
            "pyodide.profile_overhead_p99_us",
            overhead,
        )
    ]


def _core_rows(core: dict[str, Any]) -> list[Row]:
    ix = core_index(core)
    rows: list[Row] = []
    ratios = [
        ratio(median_us(ix, "mabwiser.ts_predict", a, s), median_us(ix, "perch.decide", a, s))
        for a, s in SHAPES
    ]
    got = [r for r in ratios if r is not None]
    head = ratio(median_us(ix, "mabwiser.ts_predict", *HEADLINE), median_us(ix, "perch.decide", *HEADLINE))
    if got:
        rows.append(
            _target_row(
                f"CPython: MABWiser TS predict time / Perch decide time ({HEAD_LABEL}; all shapes)",
                f"{num(head, 2)}x ({min(got):.2f}x to {max(got):.2f}x)",
                "core.mabwiser_ratio",
                head,
            )
        )
    vw = ratio(
        median_us(ix, "vw.cb_explore_adf_predict", *HEADLINE), median_us(ix, "perch.decide", *HEADLINE)
    )
    if vw is not None:
        rows.append(
            (f"CPython: VW cb_explore_adf predict / Perch decide ({HEAD_LABEL})", f"{vw:.2f}x", "—", "")
        )
    return rows


def _learner_rows(lr: dict[str, Any]) -> list[Row]:
    if not lr.get("events"):
        return []
    series = list(lr["events"].items())
    (lo_n, lo), (hi_n, hi) = series[0], series[-1]
    growth = TARGETS["learner.growth"]
    rows: list[Row] = [
        (
            f"Learn-and-publish cycle, {int(lo_n):,} → {int(hi_n):,} exposures ({HEAD_LABEL})",
            f"{lo['cycle_s']:.2f} s → {hi['cycle_s']:.2f} s",
            growth.text,
            "met" if hi["cycle_s"] <= lo["cycle_s"] * growth.limit + 0.05 else "**missed**",
        )
    ]
    ctx = lr.get("contextual")
    if ctx:
        rows.append(
            _target_row(
                f"Learn-and-publish cycle, contextual, {ctx['arms']} arms x {ctx['columns']} columns x "
                f"{ctx['cells']:,} cells",
                f"{ctx['cycle_s']:.2f} s (learn {ctx['learn_s']:.2f} s, gate {ctx['gate_s']:.2f} s)",
                "learner.contextual_cycle_s",
                ctx["cycle_s"],
            )
        )
    big = lr.get("grid", {}).get("50x500")
    if big:
        rows.append(("Learn-and-publish cycle, 50 arms x 500 segments", f"{big['cycle_s']:.1f} s", "—", ""))
    return rows


def _ingest_rows(ing: dict[str, Any]) -> list[Row]:
    """The HTTP path as measured (no target)."""
    return [
        (
            f"Ingestion, {backend}, {r['batch_size']} events/batch, {r['senders']} senders",
            f"{r['events_per_s']:,.0f} events/s",
            "—",
            "",
        )
        for backend, b in ing["backends"].items()
        for r in b.get("runs", [])
    ]


def _consume_rows(consume: dict[str, Any]) -> list[Row]:
    """The queue path, against its target."""
    return [
        (figure, value, target, "met" if met else "**missed**")
        for figure, value, target, met in bench_consume.verdicts(consume)
    ]


def _clickhouse_rows(data: dict[str, Any]) -> list[Row]:
    return [
        (figure, value, target, "met" if met else "**missed**")
        for figure, value, target, met in bench_clickhouse.verdicts(data)
    ]


def _profile_rows(data: dict[str, Any]) -> list[Row]:
    return [
        (figure, value, target, "met" if met else "**missed**")
        for figure, value, target, met in bench_profiles.verdicts(data)
    ]


def _http_rows(http: dict[str, Any]) -> list[Row]:
    return [
        (
            f"`perch edge dev`, {r['concurrency']} connections",
            f"p50 {ms(p(r['wall'], 'p50_us'))} / p99 {ms(p(r['wall'], 'p99_us'))} ms wall; "
            f"Server-Timing p99 {ms(p(r['server_timing'], 'p99_us'))} ms; "
            f"{r['requests_per_s']:,.0f} req/s",
            "—",
            "",
        )
        for r in http["levels"]
    ]


_HEADLINE_ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "pyodide": _pyodide_rows,
    "core": _core_rows,
    "learner": _learner_rows,
    "learning": learning_verdicts,
    "ingest": _ingest_rows,
    "consume": _consume_rows,
    "clickhouse": _clickhouse_rows,
    "profiles": _profile_rows,
    "http": _http_rows,
}


def _headline(sections: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The headline table, and the targets missed."""
    rows = [
        row
        for name, rows_of in _HEADLINE_ROWS.items()
        if sections.get(name, {}).get("ok")
        for row in rows_of(sections[name])
    ]
    missed = [
        f"{figure}: {value} (target {target})"
        for figure, value, target, verdict in rows
        if verdict.startswith("**")
    ]
    return table(["figure", "measured", "target", ""], rows, "lllr"), missed


def _machine(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    sections = results["sections"]
    py = sections.get("pyodide", {})
    rt = py.get("runtime", {})
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    others = ", ".join(f"{name} {s.get('others_cores', 0):.2f}" for name, s in sections.items())
    return [
        "## Machine",
        "",
        *table(
            ["", ""],
            [
                ["CPU", f"{m['cpu']}, {m['cores']} cores, {m['memory']}"],
                ["OS", m["os"]],
                ["CPython", f"{m['python']} ({m['implementation']})"],
                ["Pyodide", f"{rt.get('pyodide', '—')} (Python {rt.get('python', '—')})"],
                ["Node", py.get("node", "—")],
                ["PostgreSQL", sections.get("ingest", {}).get("postgresql_version", "—")],
                ["commit", f"{m['commit']}{' (with uncommitted changes)' if m['dirty'] else ''}"],
                ["packages", packages],
                [
                    f"cores kept busy by other processes, per section (of {m['cores']}; the "
                    "PostgreSQL server's work for the ingestion section counts here)",
                    others or "—",
                ],
            ],
            "ll",
        ),
    ]


def _section(name: str, section: dict[str, Any]) -> list[str]:
    if not section.get("ok"):
        return [f"## {name}", "", f"**Failed**: `{section.get('error')}`", ""]
    return [
        *_RENDERERS[name](section),
        f"*Section time: {section['seconds']:.0f} s; other processes kept "
        f"{section.get('others_cores', 0):.2f} cores busy meanwhile.*",
        "",
    ]


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Perch benchmarks",
        "",
        f"Written by `{results['command']}` (`make bench`) on {results['started']}, in "
        f"{results['seconds'] / 60:.1f} minutes. One fixed seed ({results['seed']}), synthetic data made "
        "by the benchmarks, nothing downloaded. Every figure below was measured in this one run; none is "
        "a pass/fail test. Rerun with `make bench`.",
        "",
    ]
    if results.get("quick"):
        lines += [
            "**Quick mode: tiny sizes, for checking the machinery only. These figures mean nothing.**",
            "",
        ]
    lines += _machine(results)
    headline, missed = _headline(results["sections"])
    lines += ["## Headline", "", *headline]
    for name in _RENDERERS:
        section = results["sections"].get(name)
        if section is not None:
            lines += _section(name, section)
    lines += ["## Targets missed in this run", ""]
    lines += [f"- {item}" for item in missed] or ["- none"]
    return "\n".join(lines).rstrip() + "\n"
