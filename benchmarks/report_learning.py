"""RESULTS.md sections 3 and 4: the learner's cycle as the data grows, and learning quality
against the peers on the same simulated visitors."""

from __future__ import annotations

from typing import Any

from benchmarks.report_format import HEAD, shape, table
from benchmarks.shapes import ARMS, SEGMENTS
from benchmarks.targets import TARGETS

__all__ = ["learner_section", "learning_section", "learning_verdicts"]

CONTEXTUAL_ENVIRONMENTS = ("additive", "interactions", "switching")
PERCH = "Perch contextual"


def learner_section(lr: dict[str, Any]) -> list[str]:
    lines = [
        "## 3. Learner scaling",
        "",
        "One forced learn-and-publish cycle (`control_plane.learning.publish.publish_experiment` on SQLite "
        "with the local KV publisher: read cells, learn with a 20,000-draw Monte Carlo allocation, promotion "
        "gate, encode, KV write, record), after one untimed cycle so the gate has a current snapshot to "
        "compare with; median of the runs shown, the parts timed inside the cycle. Events series: "
        f"{shape(lr.get('shape', HEAD))} (arms x segments), statistics written directly as ingestion "
        "leaves them, plus the newest 25,000 logged exposure rows the gate reads "
        "(it reads at most 20,000). Seconds.",
        "",
    ]

    heads = [
        "exposures",
        "cells",
        "segments",
        "cycle",
        "cells read",
        "learn",
        "gate",
        "rest (encode, KV, record)",
        "runs",
        "outcome",
    ]
    rows = [_row(f"{int(k):,}", r) for k, r in lr.get("events", {}).items()]
    rows += [
        _row(f"{int(k):,} ingested ({r['events_ingested']:,} events in {r['ingest_s']:.1f} s)", r)
        for k, r in lr.get("ingested", {}).items()
    ]
    lines += table(heads, rows)
    lines += [
        "The *ingested* rows ran real exposures and their outcomes through "
        "`control_plane.events.ingest.ingest` (batches of 100, in process) and then the same cycle on what "
        "ingestion left.",
        "",
        f"Segments x arms ({lr.get('grid_events', 0):,} exposures each), cycle seconds (of which learn):",
        "",
    ]
    lines += _grid(lr)
    ctx = lr.get("contextual")
    if ctx:
        lines += _contextual(ctx)
    return lines


def _row(label: str, r: dict[str, Any]) -> list[str]:
    return [
        label,
        f"{r['cells']:,}",
        f"{r['segments']}",
        f"{r['cycle_s']:.3f}",
        f"{r['cells_read_s'] * 1000:.1f} ms",
        f"{r['learn_s']:.3f}",
        f"{r['gate_s']:.3f}",
        f"{r['rest_s']:.3f}",
        f"{r['runs']}",
        r.get("published", ""),
    ]


def _grid(lr: dict[str, Any]) -> list[str]:
    grid = lr.get("grid", {})
    grid_rows = []
    for segments in SEGMENTS:
        cells = []
        for arms in ARMS:
            r = grid.get(f"{arms}x{segments}")
            cells.append("—" if r is None else f"{r['cycle_s']:.2f} ({r['learn_s']:.2f})")
        grid_rows.append([f"{segments} segments", *cells])
    return table(["", *(f"{a} arms" for a in ARMS)], grid_rows)


def _contextual(ctx: dict[str, Any]) -> list[str]:
    return [
        f"Contextual experiment: {ctx['arms']} arms, {ctx['features']} features of "
        f"{ctx['values']} values ({ctx['columns']} columns), {ctx['cells']:,} cells: cycle "
        f"{ctx['cycle_s']:.2f} s (read cells {ctx['cells_read_s']:.2f}, learn {ctx['learn_s']:.2f}, "
        f"gate {ctx['gate_s']:.2f}, rest {ctx['rest_s']:.2f}), snapshot {ctx['bytes']:,} bytes.",
        "",
    ]


def _peers(policies: dict[str, Any]) -> dict[str, Any]:
    return {name: row for name, row in policies.items() if not name.startswith("Perch")}


def learning_verdicts(lg: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, measured, target, verdict) for the issue's learning goals."""
    out = []
    worlds = lg["table"]
    additive = worlds.get("additive", {}).get(PERCH)
    if additive is not None:
        target = TARGETS["learning.additive_captured"]
        out.append(
            (
                "Learning: Perch contextual, share of the oracle's lift, additive world",
                f"{additive['captured']:.0%}",
                target.text,
                target.verdict(additive["captured"]),
            )
        )
    ahead = TARGETS["learning.ahead"]
    for env in CONTEXTUAL_ENVIRONMENTS:
        perch, peers = worlds.get(env, {}).get(PERCH), _peers(worlds.get(env, {}))
        if perch is None or not peers:
            continue
        best_name, best = max(peers.items(), key=lambda kv: kv[1]["captured"])
        out.append(
            (
                f"Learning: Perch contextual vs the best peer ({best_name}), {env} world",
                f"{perch['captured']:.0%} vs {best['captured']:.0%}",
                ahead.text,
                "met" if perch["captured"] - best["captured"] > ahead.limit else "**missed**",
            )
        )
    perch, peers = worlds.get("context-free", {}).get(PERCH), _peers(worlds.get("context-free", {}))
    if perch is not None and peers:
        best_name, best = max(peers.items(), key=lambda kv: kv[1]["captured"])
        behind = TARGETS["learning.context_free_behind"]
        out.append(
            (
                f"Learning: Perch contextual vs the best peer ({best_name}), context-free world",
                f"{perch['captured']:.0%} vs {best['captured']:.0%}",
                behind.text,
                behind.verdict(best["captured"] - perch["captured"]),
            )
        )
    return out


def learning_section(lg: dict[str, Any]) -> list[str]:
    lines = [
        "## 4. Learning quality",
        "",
        f"`benchmarks/bench_learning.py`: {lg['visitors']:,} visitors x seeds {lg['seeds']} per world, "
        "4 arms, features device, source and country (some cells rare), "
        f"{lg['returning']:.0%} returning visitors, conversions arriving after an exponential delay of "
        f"mean {lg['delay_mean_s']:.0f} s against a publish every {lg['publish_every']:,} visits "
        f"({lg['publish_every'] * lg['visit_ms'] / 1000:.0f} s). Perch runs its real loop in-process "
        "(ingestion into SQLite, learn, promotion gate, KV, `core.decide`); the peers see the same "
        "visitors and the same conversion draws. Captured = (policy - uniform) / (oracle - uniform) in "
        "expected conversions, mean over seeds [min, max]; regret = expected conversions lost against "
        "the oracle.",
        "",
    ]
    for env, rows in lg["table"].items():
        ordered = sorted(rows.items(), key=lambda kv: -kv[1]["captured"])
        lines += [f"**{env}**", ""]
        lines += table(
            ["policy", "captured", "regret", "s per run"],
            [
                [
                    name,
                    f"{r['captured']:.1%} [{r['captured_min']:.0%}, {r['captured_max']:.0%}]",
                    f"{r['regret']:,.0f}",
                    f"{r['seconds']:.0f}",
                ]
                for name, r in ordered
            ],
            "lrrr",
        )
    skipped = lg.get("skipped")
    if skipped:
        lines += [f"Not run (package not installed): {', '.join(skipped)}.", ""]
    return lines
