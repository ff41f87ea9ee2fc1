"""The demo's report: Perch against a uniform A/B split and the oracle, on the same visitors and
draws; printed, and written as summary.json and a regret plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cli.demo_visitors import Outcome, Visit, oracle_arm, true_rate

__all__ = [
    "print_profiles_report",
    "print_report",
    "regret_series",
    "summarize",
    "summarize_profiles",
    "write_files",
]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))] if ordered else float("nan")


def summarize(visits: list[Visit], outcomes: list[Outcome]) -> dict[str, Any]:
    perch_expected = sum(o.expected for o in outcomes)
    uniform_expected = sum(true_rate(v.device, v.source, v.uniform_arm) for v in visits)
    oracle_expected = sum(true_rate(v.device, v.source, oracle_arm(v.device, v.source)) for v in visits)
    realized = {
        "perch": sum(o.converted for o in outcomes),
        "uniform": sum(v.u < true_rate(v.device, v.source, v.uniform_arm) for v in visits),
        "oracle": sum(v.u < true_rate(v.device, v.source, oracle_arm(v.device, v.source)) for v in visits),
    }
    gap = oracle_expected - uniform_expected
    # Holdout and no-consent visitors get the default by design: how much of the possible lift
    # did Perch capture where it was allowed to choose?
    chosen = [(v, o) for v, o in zip(visits, outcomes, strict=True) if o.reason == "personalized"]
    chosen_gap = sum(
        true_rate(v.device, v.source, oracle_arm(v.device, v.source))
        - true_rate(v.device, v.source, v.uniform_arm)
        for v, _ in chosen
    )
    chosen_gain = sum(o.expected - true_rate(v.device, v.source, v.uniform_arm) for v, o in chosen)
    timings = [o.decide_ms for o in outcomes if o.decide_ms is not None]
    return {
        "visits": len(visits),
        "errors": sum(o.error is not None for o in outcomes),
        "conversions": realized,
        "expected_conversions": {
            "perch": perch_expected,
            "uniform": uniform_expected,
            "oracle": oracle_expected,
        },
        "regret": {"perch": oracle_expected - perch_expected, "uniform": gap},
        "lift_captured": (perch_expected - uniform_expected) / gap if gap > 0 else None,
        "lift_captured_personalized": chosen_gain / chosen_gap if chosen_gap > 0 else None,
        "reasons": {r: sum(o.reason == r for o in outcomes) for r in sorted({o.reason for o in outcomes})},
        "server_timing_ms": {"p50": _percentile(timings, 0.5), "p99": _percentile(timings, 0.99)},
        "wall_ms": {
            "p50": _percentile([o.wall_ms for o in outcomes], 0.5),
            "p99": _percentile([o.wall_ms for o in outcomes], 0.99),
        },
    }


def regret_series(
    visits: list[Visit], outcomes: list[Outcome], points: int = 100
) -> dict[str, list[tuple[float, float]]]:
    step = max(1, len(visits) // points)
    perch = uniform = 0.0
    out: dict[str, list[tuple[float, float]]] = {"Perch": [], "uniform A/B": []}
    for i, (v, o) in enumerate(zip(visits, outcomes, strict=True), start=1):
        best = true_rate(v.device, v.source, oracle_arm(v.device, v.source))
        perch += best - o.expected
        uniform += best - true_rate(v.device, v.source, v.uniform_arm)
        if i % step == 0 or i == len(visits):
            out["Perch"].append((i, perch))
            out["uniform A/B"].append((i, uniform))
    return out


def write_files(
    data_dir: Path, visits: list[Visit], outcomes: list[Outcome], summary: dict[str, Any]
) -> dict[str, Path]:
    from control_plane.http.charts import line_chart

    chart = data_dir / "regret.svg"
    title = "Cumulative expected regret vs the oracle"
    chart.write_text(line_chart(regret_series(visits, outcomes), title, "conversions lost"))
    (data_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"regret plot": chart, "summary": data_dir / "summary.json"}


def print_report(
    summary: dict[str, Any], report: dict[str, Any] | None, files: dict[str, Path], elapsed_s: float
) -> None:
    conv, exp = summary["conversions"], summary["expected_conversions"]
    click.echo("")
    click.secho(f"Perch demo: {summary['visits']:,} visits in {elapsed_s:.0f} s", bold=True)
    click.echo(f"  decisions by reason: {summary['reasons']}")
    click.echo("")
    click.echo(f"  {'policy':<14}{'conversions':>12}{'expected':>10}{'rate':>8}{'regret':>9}")
    for name, label in (("oracle", "oracle"), ("perch", "Perch"), ("uniform", "uniform A/B")):
        regret = exp["oracle"] - exp[name]
        rate = exp[name] / summary["visits"]
        click.echo(f"  {label:<14}{conv[name]:>12,}{exp[name]:>10.0f}{rate:>8.2%}{regret:>9.0f}")
    captured = summary["lift_captured"]
    if captured is not None:
        click.echo(
            f"  Perch captured {captured:.0%} of the oracle's lift over a uniform split "
            f"(expected conversions, same visitors and draws)"
        )
    personal = summary["lift_captured_personalized"]
    if personal is not None:
        click.echo(
            f"  ... and {personal:.0%} on the visits it personalized (holdout and no-consent visitors "
            f"get the default by design)"
        )
    timing, wall = summary["server_timing_ms"], summary["wall_ms"]
    click.echo(
        f"  edge decision time (Server-Timing): p50 {timing['p50']:.3f} ms, p99 {timing['p99']:.3f} ms; "
        f"HTTP round trip p50 {wall['p50']:.1f} ms, p99 {wall['p99']:.1f} ms"
    )
    if report is not None:
        h = report["holdout"]
        if h["lift"] is not None and h["lift_ci"]:
            lo, hi = h["lift_ci"]
            click.echo(
                f"  holdout lift (control plane report): {h['lift'] * 100:+.2f} pp conversion rate, "
                f"95% CI [{lo * 100:+.2f}, {hi * 100:+.2f}] pp "
                f"({h['personalized']['exposures']:,} personalized vs {h['holdout']['exposures']:,} held out)"
            )
        if report.get("alerts"):
            click.secho(f"  alerts: {[a['message'] for a in report['alerts'][:3]]}", fg="yellow")
    for name, path in files.items():
        click.echo(f"  {name}: {path}")
    if summary["errors"]:
        click.secho(f"  {summary['errors']} visits failed", fg="red")


def _captured(visits: list[Visit], outcomes: list[Outcome]) -> dict[str, Any]:
    """Share of the oracle's lift over uniform captured, in the world where interest counts."""

    def rate(v: Visit, arm: str) -> float:
        return true_rate(v.device, v.source, arm, v.interest)

    def share(pairs: list[tuple[Visit, Outcome]]) -> float | None:
        gap = sum(
            rate(v, oracle_arm(v.device, v.source, v.interest)) - rate(v, v.uniform_arm) for v, _ in pairs
        )
        gain = sum(o.expected - rate(v, v.uniform_arm) for v, o in pairs)
        return gain / gap if gap > 0 else None

    pairs = list(zip(visits, outcomes, strict=True))
    personalized = [(v, o) for v, o in pairs if o.reason == "personalized"]
    # The second half: by then most returning visitors have a profile at the edge.
    late = personalized[len(personalized) // 2 :]
    return {
        "captured": share(pairs),
        "captured_personalized": share(personalized),
        "captured_personalized_second_half": share(late),
        "expected_conversions": sum(o.expected for o in outcomes),
        "errors": sum(o.error is not None for o in outcomes),
        "error_examples": sorted({o.error for o in outcomes if o.error is not None})[:5],
    }


def summarize_profiles(
    visits: list[Visit], without: list[Outcome], with_profiles: list[Outcome]
) -> dict[str, Any]:
    """`perch demo --profiles`: the same visits decided by the hero without profile features and by
    its twin with them, each against uniform and the oracle that knows every visitor's interest."""
    return {
        "visits": len(visits),
        "without_profiles": _captured(visits, without),
        "with_profiles": _captured(visits, with_profiles),
        "oracle_expected": sum(
            true_rate(v.device, v.source, oracle_arm(v.device, v.source, v.interest), v.interest)
            for v in visits
        ),
        "uniform_expected": sum(true_rate(v.device, v.source, v.uniform_arm, v.interest) for v in visits),
    }


def print_profiles_report(summary: dict[str, Any], elapsed_s: float) -> None:
    click.echo("")
    click.secho(f"Perch demo with profiles: {summary['visits']:,} visits in {elapsed_s:.0f} s", bold=True)
    oracle, uniform = summary["oracle_expected"], summary["uniform_expected"]
    click.echo(f"  expected conversions: oracle {oracle:.0f}, uniform {uniform:.0f}")
    click.echo(f"  {'experiment':<32}{'expected':>10}{'captured':>10}{'personalized':>14}{'2nd half':>10}")
    for key, label in (
        ("without_profiles", "device + source"),
        ("with_profiles", "device + source + profile"),
    ):
        r = summary[key]

        def pct(x: float | None) -> str:
            return "—" if x is None else f"{x:.0%}"

        click.echo(
            f"  {label:<32}{r['expected_conversions']:>10.0f}{pct(r['captured']):>10}"
            f"{pct(r['captured_personalized']):>14}{pct(r['captured_personalized_second_half']):>10}"
        )
    click.echo("  (captured: share of the oracle's lift over a uniform split, same visits and draws)")
