"""RESULTS.md section 1: the core on CPython against MABWiser and Vowpal Wabbit."""

from __future__ import annotations

from typing import Any

from benchmarks.report_format import core_index, median_us, num, ratio, table
from benchmarks.shapes import ARMS, SHAPES

__all__ = ["core_section"]

Index = dict[tuple[str, int | None, int | None], dict[str, Any]]


def core_section(core: dict[str, Any]) -> list[str]:
    ix = core_index(core)
    lines = [
        "## 1. Core on CPython (pytest-benchmark)",
        "",
        f"`{core.get('command', 'pytest benchmarks')}` "
        f"(pytest-benchmark {core.get('pytest_benchmark', '?')}). "
        "Medians in µs per call. *x MABWiser* and *x VW* are the peer's median divided by Perch's "
        "`decide` median for the same shape: above 1, Perch is faster. MABWiser: one fitted "
        "`ThompsonSampling` `MAB` per segment, looked up from the context, then `predict()`. Vowpal "
        "Wabbit: `--cb_explore_adf -q sa --epsilon 0.05`, `predict` on the visitor's text examples "
        "(shared device/source features, one line per arm) and a draw from the returned PMF. See "
        "`benchmarks/peers.py`.",
        "",
        *_against_peers(ix),
        *_vw_floor(ix),
        *_decision_parts(ix),
        *_generators(ix),
    ]
    if core.get("skipped"):
        lines += [f"Skipped benchmarks: {core['skipped']} (bench extras missing?).", ""]
    return lines


def _against_peers(ix: Index) -> list[str]:
    rows = []
    for arms, segments in SHAPES:
        perch = median_us(ix, "perch.decide", arms, segments)
        mab = median_us(ix, "mabwiser.ts_predict", arms, segments)
        vw = median_us(ix, "vw.cb_explore_adf_predict", arms, segments)
        decode = median_us(ix, "perch.decode", arms, segments)
        size = ix.get(("perch.decode", arms, segments), {}).get("snapshot_bytes")
        rows.append(
            [
                f"{arms} x {segments}",
                num(perch),
                num(mab),
                num(ratio(mab, perch), 2),
                num(vw),
                num(ratio(vw, perch), 2),
                num(decode),
                "—" if size is None else f"{size:,}",
            ]
        )
    return table(
        [
            "arms x segments",
            "Perch `decide` µs",
            "MABWiser TS µs",
            "x MABWiser",
            "VW cb_explore_adf µs",
            "x VW",
            "`decode_snapshot` µs",
            "snapshot bytes",
        ],
        rows,
    )


def _vw_floor(ix: Index) -> list[str]:
    pre = [
        [
            f"{arms} x 50",
            num(median_us(ix, "vw.cb_explore_adf_predict_preparsed", arms, 50)),
            num(
                ratio(
                    median_us(ix, "vw.cb_explore_adf_predict_preparsed", arms, 50),
                    median_us(ix, "perch.decide", arms, 50),
                ),
                2,
            ),
        ]
        for arms in ARMS
    ]
    return [
        "VW's floor: `predict` on examples parsed once beforehand (a request cannot do this: its "
        "context is new), plus the draw from the PMF:",
        "",
        *table(["arms x segments", "VW pre-parsed µs", "x VW pre-parsed"], pre),
    ]


def _decision_parts(ix: Index) -> list[str]:
    parts = [
        ["`bucket` (SHA-256 hash to [0, 1))", num(median_us(ix, "perch.bucket"), 2)],
        [
            "`draw_stream` (SHA-256 seed + Mersenne Twister seeding)",
            num(median_us(ix, "perch.part.draw_stream"), 2),
        ],
    ]
    parts += [
        [
            f"Beta draws alone, {arms} arms (`beta_variates`)",
            num(median_us(ix, "perch.part.beta_draws", arms), 2),
        ]
        for arms in ARMS
    ]
    parts += [
        [
            f"`segment_for`, {segments} segments",
            num(median_us(ix, "perch.part.segment_for", None, segments), 2),
        ]
        for segments in (50, 500)
    ]
    return ["Where a decision's time goes (medians, µs):", "", *table(["part", "µs"], parts)]


def _generators(ix: Index) -> list[str]:
    gens = [
        [
            f"{arms}",
            num(median_us(ix, "generator.mersenne", arms), 2),
            num(median_us(ix, "generator.splitmix64", arms), 2),
        ]
        for arms in (2, 50)
    ]
    return [
        "Per-visitor generator (the existing comparison): seed from the unit's hash, then a Thompson "
        "draw over *arms* arms, Mersenne Twister (what `decide` uses) against pure-Python SplitMix64:",
        "",
        *table(["arms", "Mersenne Twister µs", "SplitMix64 µs"], gens),
    ]
