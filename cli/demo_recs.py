"""The demo's recommendations block: 5 positions filled from 20 items, in the profile world.

Hidden truth: each item has a base click rate; an item of the visitor's interest is clicked
``INTEREST_BOOST`` times as often; and a position is looked at with the chance ``EXAMINATION``
gives it (the position bias the report's model fits). A click on position p of item i happens
with ``EXAMINATION[p] * attractiveness(i, visitor)``.

Items are declared interleaved across their four groups, so the default order (what a visitor
without consent sees) is diverse too. The ``gifts`` group is nobody's interest and starts weakest:
left alone, a learner would stop showing it, which is what the exposure floors are for.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import click

from core import quota

__all__ = [
    "RECS",
    "ListOutcome",
    "clicks",
    "print_recs_report",
    "recs_spec",
    "summarize_recs",
]

RECS = "recs"
SLOTS = 5
DIVERSITY = 0.2
MIN_EXPOSURES = 50  # per item and segment per period: the floor
PERIOD_S = 30  # the demo is a day's traffic in under two minutes: its "day" is 30 s
EXAMINATION = (1.0, 0.8, 0.65, 0.5, 0.4)
INTEREST_BOOST = 2.5
GROUPS = ("running-shoes", "cookware", "travel-bags", "gifts")
BASES = (0.10, 0.08, 0.06, 0.045, 0.03)  # the five items of each group, best first
ITEMS = [f"{GROUPS[i % 4]}-{i // 4}" for i in range(20)]  # interleaved: running-shoes-0, cookware-0, ...
GROUP_OF = {item: GROUPS[i % 4] for i, item in enumerate(ITEMS)}
BASE_OF = {item: BASES[i // 4] * (0.7 if GROUP_OF[item] == "gifts" else 1.0) for i, item in enumerate(ITEMS)}


def attractiveness(item: str, interest: str) -> float:
    return BASE_OF[item] * (INTEREST_BOOST if GROUP_OF[item] == interest else 1.0)


def expected_clicks(items: list[str], interest: str) -> float:
    return sum(EXAMINATION[p] * attractiveness(item, interest) for p, item in enumerate(items))


def oracle_list(interest: str, *, diverse: bool = False) -> list[str]:
    """The best list for a visitor of ``interest``: by attractiveness; with ``diverse``, the best
    list that also keeps the diversity quota against their interest."""
    ranked = sorted(ITEMS, key=lambda i: -attractiveness(i, interest))
    top = ranked[:SLOTS]
    if not diverse:
        return top
    owed = quota(DIVERSITY, SLOTS)
    outside = [i for i in ranked if GROUP_OF[i] != interest]
    inside = [i for i in ranked if GROUP_OF[i] == interest]
    keep = sum(1 for i in top if GROUP_OF[i] != interest)
    chosen = top if keep >= owed else inside[: SLOTS - owed] + outside[:owed]
    return sorted(chosen, key=lambda i: -attractiveness(i, interest))


def uniform_expected(interest: str) -> float:
    """A uniformly random list of 5 distinct items: every item at every position equally often."""
    mean = sum(attractiveness(i, interest) for i in ITEMS) / len(ITEMS)
    return sum(EXAMINATION) * mean


@dataclass
class ListOutcome:
    items: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    reason: str = ""
    segment: str = ""
    primary: str = ""
    at_s: float = 0.0  # when it was answered (the floors' period it belongs to)
    clicks: int = 0
    expected: float = 0.0
    error: str | None = None


def clicks(decision: dict[str, Any], interest: str, rng: random.Random) -> tuple[ListOutcome, list[str]]:
    """What the visitor does with a list: the outcome, and the tokens of the positions clicked."""
    out = ListOutcome(
        reason=decision["reason"],
        segment=decision.get("segment") or "",
        primary=decision.get("primary_group") or "",
        at_s=time.time(),
    )
    tokens = []
    for p, item in enumerate(decision.get("items") or []):
        out.items.append(item["arm"])
        out.groups.append(item["group"])
        if rng.random() < EXAMINATION[p] * attractiveness(item["arm"], interest):
            out.clicks += 1
            if item.get("token"):
                tokens.append(item["token"])
    out.expected = expected_clicks(out.items, interest)
    return out, tokens


def recs_spec() -> dict[str, Any]:
    return {
        "key": RECS,
        "default_arm": ITEMS[0],
        "features": ["profile.interest"],
        "model": "segments",
        "holdout": 0.0,
        "floor": 0.02,
        "prior": {"alpha": 1, "beta": 20, "shrinkage": 30},
        "reward": {"kind": "binary", "window_s": 3600},
        "max_age_s": 3600,
        "arms": [
            {
                "key": item,
                "group": GROUP_OF[item],
                "html": f"<li class='rec'>{item}</li>",
                "payload": {"sku": item},
            }
            for item in ITEMS
        ],
        "ranking": {
            "slots": SLOTS,
            "diversity": DIVERSITY,
            "min_exposures": MIN_EXPOSURES,
            "period_s": PERIOD_S,
        },
    }


def summarize_recs(
    interests: list[str], lists: list[ListOutcome], report: dict[str, Any] | None
) -> dict[str, Any]:
    """Clicks against a uniform and an oracle ranking, the diversity share of every list, the floors."""
    done = [
        (interest, o) for interest, o in zip(interests, lists, strict=True) if o.error is None and o.items
    ]
    owed = quota(DIVERSITY, SLOTS)
    shares = [sum(g != (o.primary or interest) for g in o.groups) / len(o.groups) for interest, o in done]
    personalized = [(i, o) for i, o in done if o.reason == "personalized"]
    # Floors hold per item in each (period, segment) of personalized lists: checked in the periods
    # the run covered whole, in the segments with room (lists enough for every item to get twice
    # its floor).
    per_cell: dict[str, dict[str, int]] = {}
    periods = [int(o.at_s // PERIOD_S) for _, o in personalized]
    whole = set(range(min(periods, default=0) + 1, max(periods, default=0)))
    for (_, o), period in zip(personalized, periods, strict=True):
        if period in whole:
            start = time.strftime("%H:%M:%S", time.gmtime(period * PERIOD_S))
            counts = per_cell.setdefault(f"{start} {o.segment}", dict.fromkeys(ITEMS, 0))
            for item in o.items:
                counts[item] += 1
    room = 2 * len(ITEMS) * MIN_EXPOSURES
    held = {s: c for s, c in per_cell.items() if sum(c.values()) >= room}

    def gap(pairs: list[tuple[str, ListOutcome]], diverse: bool) -> float | None:
        best = sum(
            expected_clicks(oracle_list(i, diverse=diverse), i) - uniform_expected(i) for i, _ in pairs
        )
        gain = sum(o.expected - uniform_expected(i) for i, o in pairs)
        return gain / best if best > 0 else None

    floors = ((report or {}).get("ranking") or {}).get("floors")
    model = ((report or {}).get("ranking") or {}).get("position_model")
    return {
        "lists": len(done),
        "errors": sum(o.error is not None for o in lists),
        "error_examples": sorted({o.error for o in lists if o.error is not None})[:5],
        "clicks": sum(o.clicks for _, o in done),
        "expected_clicks": sum(o.expected for _, o in done),
        "uniform_expected": sum(uniform_expected(i) for i, _ in done),
        "oracle_expected": sum(expected_clicks(oracle_list(i), i) for i, _ in done),
        "oracle_diverse_expected": sum(expected_clicks(oracle_list(i, diverse=True), i) for i, _ in done),
        "captured": gap(done, False),
        "captured_personalized": gap(personalized, False),
        "captured_personalized_of_diverse_oracle": gap(personalized, True),
        "min_outside_share": min(shares, default=None),
        "lists_below_quota": sum(s * SLOTS < owed for s in shares),
        "shown_per_period_and_segment": per_cell,
        "periods_whole": len(whole),
        "min_exposures": MIN_EXPOSURES,
        "floor_segments": sorted(held),
        "least_in_a_floor_segment": min((n for c in held.values() for n in c.values()), default=None),
        "below_floor_in_run": sorted(
            f"{s}/{i}" for s, c in held.items() for i, n in c.items() if n < MIN_EXPOSURES
        ),
        "report_floors_met": None if floors is None else sum(row["met"] for row in floors["items"]),
        "examination_true": list(EXAMINATION),
        "examination_fitted": None if model is None else model["examination"],
    }


def print_recs_report(summary: dict[str, Any]) -> None:
    click.echo("")
    click.secho(
        f"Recommendations block: {SLOTS} positions from {len(ITEMS)} items, {summary['lists']:,} lists",
        bold=True,
    )
    click.echo(
        f"  expected clicks: Perch {summary['expected_clicks']:.0f} (seen {summary['clicks']}), "
        f"uniform ranking {summary['uniform_expected']:.0f}, oracle ranking {summary['oracle_expected']:.0f} "
        f"(oracle within the diversity quota {summary['oracle_diverse_expected']:.0f})"
    )

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{x:.0%}"

    click.echo(
        f"  captured of the oracle's lift over uniform: {pct(summary['captured'])} of all lists, "
        f"{pct(summary['captured_personalized'])} of personalized lists "
        f"({pct(summary['captured_personalized_of_diverse_oracle'])} of the diverse oracle's)"
    )
    click.echo(
        f"  outside the primary interest group: at least {pct(summary['min_outside_share'])} of every list "
        f"(quota {quota(DIVERSITY, SLOTS)} of {SLOTS}); lists below it: {summary['lists_below_quota']}"
    )
    least = summary["least_in_a_floor_segment"]
    below = summary["below_floor_in_run"]
    head = f"  floors ({summary['min_exposures']:,} per item and segment per {PERIOD_S} s period)"
    if not summary["floor_segments"]:
        click.echo(f"{head}: not checked, the run covered no whole period with room for them")
    else:
        click.echo(
            f"{head}: over the run's {summary['periods_whole']} whole periods, in each of the "
            f"{len(summary['floor_segments'])} (period, segment) cells with room, every item shown at "
            f"least {least:,} times" + (f"; below: {', '.join(below)}" if below else " — met")
        )
    fitted = summary["examination_fitted"]
    if fitted:
        pairs = ", ".join(
            f"{f:.2f} ({t:.2f})" for f, t in zip(fitted, summary["examination_true"], strict=False)
        )
        click.echo(f"  position bias fitted (true): {pairs}")
