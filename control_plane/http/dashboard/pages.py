"""The dashboard's pages: login, the experiments list, and an experiment's page, one function
per section, each from the report's records (control_plane/learning/report_types.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from control_plane.http import _format as fmt
from control_plane.http.charts import allocation_chart, conversion_chart, lift_chart
from control_plane.http.dashboard.style import Html, page, table
from control_plane.http.dashboard.style import h as _h
from control_plane.learning.report_types import (
    OPE,
    Alert,
    ArmRow,
    Estimates,
    Evaluation,
    FeatureEffect,
    Report,
    SnapshotRow,
)
from control_plane.storage.store import ExperimentRecord

__all__ = ["ALERTS_COUNTED", "experiment_page", "login_page", "message_page", "overview_page"]

ALERTS_COUNTED = 100  # the list shows "100+" past this: counting further is not worth a query


def login_page(message: str = "") -> str:
    error = f'<p class="error" role="alert">{_h(message)}</p>' if message else ""
    body = (
        '<section class="login"><h1>Log in</h1>'
        f"{error}"
        '<form method="post" action="/login">'
        '<label for="token">Admin token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>'
        '<button type="submit">Log in</button></form>'
        '<p class="muted">The control plane\'s <code>PERCH_ADMIN_TOKEN</code>.</p></section>'
    )
    return page("Log in", body, logged_in=False)


def message_page(title: str, message: str, *, logged_in: bool) -> str:
    body = (
        f'<section><h1>{_h(title)}</h1><p>{_h(message)}</p><p><a href="/">All experiments</a></p></section>'
    )
    return page(title, body, logged_in=logged_in)


def _experiment_href(key: str) -> str:
    return "/experiments/" + quote(key, safe="")


def _overview_row(row: Mapping[str, Any], now_ms: int) -> list[Any]:
    last = row.get("last_snapshot")
    if last:
        age_ms = now_ms - last["created_ms"]
        stale = age_ms > row["max_age_s"] * 1000
        age = Html(
            _h(fmt.age(age_ms))
            + (' <span class="badge bad">stale: edge serves default</span>' if stale else "")
        )
        version: Any = last["version"]
    else:
        age, version = Html('<span class="muted">never published</span>'), "—"
    alerts = row["alerts"]
    shown = f"{alerts}+" if alerts >= ALERTS_COUNTED else str(alerts)
    badge = Html(f'<span class="badge{" bad" if alerts else ""}">{_h(shown)}</span>')
    link = Html(f'<a href="{_h(_experiment_href(row["key"]))}">{_h(row["key"])}</a>')
    return [link, row["version"], ", ".join(row["arms"]), version, age, badge]


def overview_page(rows: Sequence[Mapping[str, Any]], now_ms: int) -> str:
    """The experiments list; ``rows`` as made by :meth:`Dashboard.overview`."""
    if not rows:
        listing: str = (
            '<p class="muted">No experiments yet: create one with <code>POST /v1/experiments</code>.</p>'
        )
    else:
        head = [("experiment", False), ("version", True), ("arms", False), ("last snapshot", True)]
        listing = table(
            [*head, ("snapshot age", False), ("alerts", True)],
            [_overview_row(row, now_ms) for row in rows],
            "experiments",
        )
    body = f"<h1>Experiments</h1><section>{listing}</section>"
    return page("Experiments", body, logged_in=True)


# --- an experiment's page, section by section ------------------------------------------------


def _best_arm(arms: Sequence[ArmRow]) -> str:
    if not arms:
        return fmt.DASH
    best = max(arms, key=lambda a: (a.prob_best, a.posterior_mean))
    return f"{best.arm} (P(best) {best.prob_best:.2f})"


def _features(value: Mapping[str, Any] | None) -> str:
    if not value:
        return fmt.DASH
    return ", ".join(f"{k}={v}" for k, v in value.items())


def _alerts_section(alerts: Sequence[Alert]) -> str:
    if not alerts:
        return '<section class="no-alerts"><h2>Alerts</h2><p class="muted">No alerts.</p></section>'
    lis = []
    for alert in alerts:
        shown = json.dumps(alert.details, sort_keys=True, default=str) if alert.details is not None else ""
        if len(shown) > 400:
            shown = shown[:399] + "…"
        lis.append(
            f"<li><time>{_h(fmt.utc(alert.at_ms))}</time> <strong>{_h(alert.kind)}</strong>: "
            f"{_h(alert.message)}" + (f" <code>{_h(shown)}</code>" if shown else "") + "</li>"
        )
    count = f"{len(alerts)} alert{'s' if len(alerts) != 1 else ''}"
    return f'<section class="alerts" role="alert"><h2>{_h(count)}</h2><ul>{"".join(lis)}</ul></section>'


def _effects_section(effects: Sequence[FeatureEffect]) -> str:
    """A contextual model's weights: one row per feature column, one ``effect [95%]`` cell per arm."""
    if not effects:
        return ""
    arms = list(effects[0].arms)
    rows = [
        [row.feature]
        + [
            f"{c.effect:+.2f} [{c.low:+.2f}, {c.high:+.2f}]"
            if (c := row.arms.get(arm)) is not None
            else fmt.DASH
            for arm in arms
        ]
        for row in effects
    ]
    listing = table([("feature", False), *((arm, True) for arm in arms)], rows, "effects")
    return (
        '<section id="effects"><h2>Feature effects</h2><p class="muted">Each arm\'s weight per feature '
        "value in the contextual model (logits for binary rewards), with its 95% interval.</p>"
        f"{listing}</section>"
    )


Read = Callable[[Estimates], float | None]
# (row, estimate, its standard error): SNIPS has none of its own; the gate uses the paired error
# of the difference, which its row shows.
_ESTIMATORS: tuple[tuple[str, Read, Read | None], ...] = (
    ("IPS", lambda e: e.ips, lambda e: e.ips_se),
    ("SNIPS", lambda e: e.snips, None),
    ("DR", lambda e: e.dr, lambda e: e.dr_se),
)


def _estimate(value: float | None) -> str:
    return fmt.DASH if value is None else f"{value:.4f}"


def _verdict(evaluation: Evaluation) -> str:
    if evaluation.passed is None:
        return fmt.DASH
    verdict = "passed" if evaluation.passed else "held back"
    if evaluation.difference is not None:
        verdict += f": difference {evaluation.difference:+.4f}"
        verdict += f" ± {evaluation.difference_se:.4f}" if evaluation.difference_se is not None else ""
    if evaluation.tolerance is not None:
        verdict += f", tolerance {evaluation.tolerance:g}"
    return verdict + (f" (overridden: {evaluation.overridden})" if evaluation.overridden else "")


def _ope_rows(evaluation: Evaluation) -> list[list[str]]:
    candidate, current = evaluation.candidate, evaluation.current
    ess = fmt.DASH
    if candidate is not None and candidate.ess is not None:
        ess = f"{candidate.ess:.1f}" + (f" of {candidate.n}" if candidate.n is not None else "")
    rows = []
    for name, estimate, error in _ESTIMATORS:
        value, baseline = (None if e is None else estimate(e) for e in (candidate, current))
        se = evaluation.difference_se
        if error is not None:
            se = None if candidate is None else error(candidate)
        verdict = _verdict(evaluation) if name == "SNIPS" else fmt.DASH
        rows.append([name, _estimate(value), _estimate(baseline), _estimate(se), ess, verdict])
    return rows


def _ope_section(ope: OPE | None) -> str:
    """The newest promotion-gate evaluation as a table: per estimator the candidate's and the
    current snapshot's reward per decision; the gate compares SNIPS, so its row has the verdict."""
    if ope is None:
        return ""
    evaluation = ope.read()
    what = (
        f"Published snapshot {ope.snapshot_version}"
        if ope.source == "snapshot"
        else f"A held-back snapshot ({ope.kind})"
    )
    caption = f"{what}, evaluated at {fmt.utc(ope.at_ms)}" + (
        f" on {evaluation.exposures:,} logged exposures" if evaluation.exposures is not None else ""
    )
    head = [("estimator", False), ("candidate", True), ("current", True), ("SE", True), ("ESS", True)]
    listing = table([*head, ("verdict", False)], _ope_rows(evaluation), "ope")
    return (
        f'<section id="ope"><h2>Off-policy evaluation</h2><p class="meta">{_h(caption)}</p>'
        + (f"<p>{_h(ope.message)}</p>" if ope.message else "")
        + f'{listing}<p class="muted">SE: the candidate\'s standard error; on the SNIPS row, the paired '
        "error of the difference the gate weighs. ESS: the logged exposures the candidate's estimate "
        "is worth.</p></section>"
    )


def _heading(record: ExperimentRecord, report: Report) -> str:
    spec = record.spec
    meta = (
        f"version {record.version} · {len(spec.arms)} arms (default {spec.default_arm}) · "
        f"holdout {spec.holdout * 100:g}% · floor {spec.floor * 100:g}% · "
        f"segments by {', '.join(spec.features) or 'nothing (global only)'} · reward {spec.reward.kind} · "
        f"report at {fmt.utc(report.generated_ms)}"
    )
    report_href = f"/v1/experiments/{quote(spec.key, safe='')}/report"
    return (
        f'<h1>{_h(spec.key)}</h1><p class="meta">{_h(meta)} · <a href="{_h(report_href)}">JSON report</a></p>'
    )


def _charts_section(report: Report) -> str:
    return (
        '<div class="grid">'
        '<section class="chart" id="allocation"><h2>Allocation over time</h2>'
        f"{allocation_chart(report.allocation_history, [a.arm for a in report.arms])}</section>"
        '<section class="chart" id="conversion"><h2>Conversion per arm</h2>'
        f"{conversion_chart(report.arms, report.reward_kind)}</section>"
        "</div>"
    )


def _arms_section(report: Report) -> str:
    def rate(v: float | None) -> str:
        return fmt.rate(v, report.binary)

    rows = [
        [
            a.arm,
            fmt.count(a.exposures),
            fmt.count(a.conversions),
            rate(a.rate),
            rate(a.posterior_mean),
            fmt.interval((a.ci_low, a.ci_high), rate),
            f"{a.prob_best:.3f}",
            fmt.share(a.allocation),
        ]
        for a in report.arms
    ]
    head = [("arm", False), ("exposures", True), ("conversions", True), ("rate", True)]
    head += [("posterior mean", True), ("95% interval", True), ("P(best)", True), ("allocation", True)]
    return f'<section id="arms"><h2>Arms</h2>{table(head, rows, "arms")}</section>'


def _lift_section(report: Report) -> str:
    holdout = report.holdout

    def diff(v: float | None) -> str:
        return fmt.diff(v, report.binary)

    lift_text = f"Lift {diff(holdout.lift)} {fmt.interval(holdout.lift_ci, diff)}" + (
        f", relative {holdout.relative_lift * 100:+.1f}%" if holdout.relative_lift is not None else ""
    )
    return (
        '<section class="chart" id="lift"><h2>Holdout lift</h2>'
        f"{lift_chart(holdout, report.reward_kind)}"
        f'<p class="lift">{_h(lift_text)}</p></section>'
    )


def _segments_section(report: Report) -> str:
    if not report.segments:
        return (
            '<section id="segments"><h2>Segments</h2>'
            '<p class="muted">No segment has exposures yet.</p></section>'
        )

    def rate(v: float | None) -> str:
        return fmt.rate(v, report.binary)

    def diff(v: float | None) -> str:
        return fmt.diff(v, report.binary)

    rows = [
        [
            seg.segment,
            _features(seg.features),
            fmt.count(seg.exposures),
            rate(seg.decomposition.personalized.rate),
            rate(seg.decomposition.holdout.rate),
            f"{diff(seg.decomposition.lift)} {fmt.interval(seg.decomposition.lift_ci, diff)}".strip(),
            _best_arm(seg.arms),
        ]
        for seg in report.segments
    ]
    head = [("segment", False), ("features", False), ("exposures", True), ("personalized", True)]
    head += [("holdout", True), ("lift [95%]", True), ("best arm", False)]
    return f'<section id="segments"><h2>Segments</h2>{table(head, rows, "segments")}</section>'


def _snapshots_section(snapshots: Sequence[SnapshotRow], now_ms: int) -> str:
    if not snapshots:
        return '<section id="snapshots"><h2>Snapshots</h2><p class="muted">Never published.</p></section>'
    rows = [
        [s.version, fmt.utc(s.created_ms), fmt.age(now_ms - s.created_ms), fmt.count(s.size)]
        for s in snapshots
    ]
    head = [("version", True), ("published", False), ("age", True), ("bytes", True)]
    return f'<section id="snapshots"><h2>Snapshots</h2>{table(head, rows, "snapshots")}</section>'


def _data_section(report: Report) -> str:
    rows = [[f"outcomes {name}", fmt.count(n)] for name, n in report.outcomes.to_dict().items()]
    rows += [[name, fmt.count(value)] for name, value in sorted(report.counters.items())]
    return f'<section id="data"><h2>Data</h2>{table([("", False), ("count", True)], rows, "data")}</section>'


def _clusters_section(clusters: Mapping[str, Any] | None, arms: Sequence[str]) -> str:
    """Behavioural clusters (control_plane.profiles): their size, what they favour, and how each
    arm converted among their visitors (by each visitor's cluster now)."""
    if not clusters or not clusters["rows"]:
        return ""

    def cell(n: int, r: float) -> str:
        return f"{r / n:.1%} of {fmt.count(n)}" if n else fmt.DASH

    rows = [
        [row["cluster"], fmt.count(row["profiles"]), ", ".join(row["favours"]) or fmt.DASH]
        + [cell(*row["arms"].get(arm, (0, 0.0))) for arm in arms]
        for row in clusters["rows"]
    ]
    head = [
        ("cluster", False),
        ("profiles", True),
        ("favours", False),
        *((f"{a}: converted", True) for a in arms),
    ]
    note = (
        f'<p class="muted">k = {len(clusters["rows"])}, chosen by silhouette '
        f"({clusters['silhouette']:.2f}); a visitor counts in the cluster their profile holds now.</p>"
    )
    return (
        f'<section id="clusters"><h2>Behavioural clusters</h2>{note}{table(head, rows, "clusters")}</section>'
    )


def _ranking_section(ranking: Mapping[str, Any] | None) -> str:
    """A ranked experiment: each item's progress to its floor this period, and the position bias."""
    if not ranking:
        return ""
    meta = (
        f"{ranking['slots']} positions; at least {ranking['quota']} outside the visitor's primary "
        f"interest group (diversity {ranking['diversity']:.0%})."
    )
    parts = [f'<section id="ranking"><h2>Ranking</h2><p class="meta">{_h(meta)}</p>']
    floors = ranking.get("floors")
    model = ranking.get("position_model") or {}
    attractiveness = model.get("attractiveness", {})
    if floors:
        need = floors["min_exposures"]
        rows = [
            [
                row["item"],
                ranking["groups"].get(row["item"], fmt.DASH),
                fmt.count(row["shown"]),
                fmt.count(row.get("least", row["shown"])),
                "met" if row["met"] else f"{row.get('least', row['shown']) / need:.0%}",
                fmt.DASH if row["item"] not in attractiveness else f"{attractiveness[row['item']]:.2%}",
            ]
            for row in floors["items"]
        ]
        head = [("item", False), ("group", False), ("shown this period", True)]
        head += [("least in a segment", True), ("floor", True)]
        head.append(("attractiveness", True))
        caption = (
            f"Floor: {fmt.count(need)} per item in each of {len(floors.get('segments', []))} segments "
            f"with traffic, from {fmt.utc(floors['period_start_ms'])} to {fmt.utc(floors['period_end_ms'])}."
        )
        parts.append(f'<p class="muted">{_h(caption)}</p>{table(head, rows, "floors")}')
    if model:
        rows = [[p + 1, f"{x:.2f}"] for p, x in enumerate(model["examination"])]
        caption = (
            f"Position bias: examination per position relative to the first, fitted on "
            f"{fmt.count(model['shown'])} positions shown and {fmt.count(model['clicks'])} rewarded."
        )
        parts.append(
            f'<p class="muted">{_h(caption)}</p>'
            f"{table([('position', True), ('examined', True)], rows, 'positions')}"
        )
    return "".join(parts) + "</section>"


def experiment_page(
    record: ExperimentRecord, report: Report, now_ms: int, clusters: Mapping[str, Any] | None = None
) -> str:
    """The page of one experiment from its report, section by section (``clusters``: the profile
    layer's, from :meth:`Dashboard.clusters`)."""
    sections = [
        _heading(record, report),
        _alerts_section(report.alerts),
        _charts_section(report),
        _arms_section(report),
        _lift_section(report),
        _segments_section(report),
        _effects_section(report.feature_effects),
        _ranking_section(report.ranking),
        _clusters_section(clusters, [a.key for a in record.spec.arms]),
        _snapshots_section(report.snapshots, now_ms),
        _data_section(report),
        _ope_section(report.ope),
    ]
    return page(record.spec.key, "".join(sections), logged_in=True)
