"""Outcomes become rewards: the exposure join, and crediting from decision tokens.

An outcome is credited once, to the (experiment, feature path, arm) cell of the decision it
rewards, and only within the experiment's reward window:

* with a valid decision token (:func:`verified_tokens`), the token names the cell and the
  decision time, so it is credited at once with no exposure lookup (:func:`credit_from_tokens`);
* otherwise it joins its exposure by decision id (:func:`join_outcomes`): ``joined`` adds its
  reward to the exposure and its cell, ``late`` and ``extra`` (a second conversion of a binary
  decision) are kept and counted, ``pending`` waits for an exposure that has not arrived yet and is
  joined when it does (:func:`waiting_for`).

Binary rewards count once per decision across both paths: each outcome records what it credited.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, or_, select

from control_plane.events.tally import Cells, IngestResult, path_of
from control_plane.experiments import ExperimentSpec
from control_plane.storage import bulk
from control_plane.storage.schema import exposures, outcomes
from core import DecisionToken, TokenError, verify_token

__all__ = ["OutcomeRow", "credit_from_tokens", "join_outcomes", "verified_tokens", "waiting_for"]


@dataclass(frozen=True, slots=True)
class OutcomeRow:
    event_id: str
    decision_id: str
    value: float
    ts_ms: int


def _reward(spec: ExperimentSpec, value: float, already: float) -> float:
    if spec.reward.kind == "binary":
        return 1.0 if value > 0 and already == 0 else 0.0
    scaled = min(max(value / spec.reward.max_value, 0.0), 1.0)
    return min(scaled, 1.0 - already)  # an exposure is at most one success


def join_outcomes(
    conn: Connection,
    *,
    cells: Cells,
    specs: dict[str, ExperimentSpec],
    result: IngestResult,
    pending: list[Any],
) -> None:
    """Join outcomes to their exposures (those that exist), in time order, and write the results."""
    ids = list({o.decision_id for o in pending})
    shown: dict[str, dict[str, Any]] = {}
    for part in bulk.parts(conn, ids):
        for row in conn.execute(select(exposures).where(bulk.member(conn, exposures.c.decision_id, part))):
            shown[row.decision_id] = dict(row._mapping)
    updates: list[dict[str, Any]] = []
    for outcome in sorted(pending, key=lambda o: (o.ts_ms, o.event_id)):
        exposure = shown.get(outcome.decision_id)
        spec = specs.get(exposure["experiment"]) if exposure else None
        if exposure is None or spec is None:
            result.pending += 1
            continue
        if outcome.ts_ms - exposure["ts_ms"] > spec.reward.window_s * 1000:
            updates.append({"event_id": outcome.event_id, "status": "late", "credited": None, "cell": None})
            result.late += 1
            cells.bump(exposure["experiment"], "late_outcomes")
            continue
        reward = _reward(spec, outcome.value, exposure["reward"])
        status = "joined"
        if reward <= 0 and spec.reward.kind == "binary" and exposure["outcomes"] > 0:
            status = "extra"
            cells.bump(exposure["experiment"], "extra_outcomes")
        # What it credited, so a later token-credited outcome of the decision knows (binary: once).
        updates.append({"event_id": outcome.event_id, "status": status, "credited": reward, "cell": None})
        result.joined += 1
        exposure["reward"] += reward
        exposure["outcomes"] += 1
        exposure["touched"] = True
        if reward > 0 and exposure["reason"] == "personalized":
            cells.add(
                exposure["experiment"],
                exposure["path"],
                exposure["arm"],
                ts=exposure["ts_ms"],
                n=0.0,
                r=reward,
            )
    joined = [
        {"decision_id": decision_id, "reward": exposure["reward"], "outcomes": exposure["outcomes"]}
        for decision_id, exposure in sorted(shown.items())
        if exposure.get("touched")
    ]
    bulk.update_rows(conn, exposures, "decision_id", joined)
    bulk.update_rows(conn, outcomes, "event_id", updates)


def verified_tokens(secret: str | None, events: Iterable[dict[str, Any]]) -> dict[str, DecisionToken]:
    """Outcome event id -> the decision its token describes, for tokens that are ours and match.

    A token that does not verify (a rotated secret, a token of an older format without the
    decision's reason) leaves its outcome to the exposure join, as before tokens described cells.
    """
    out: dict[str, DecisionToken] = {}
    if not secret:
        return out
    for event in events:
        raw = event.get("token") if event.get("type") == "outcome" else None
        if raw is None:
            continue
        try:
            token = verify_token(secret, raw)
        except TokenError:
            continue
        if token.reason and (token.decision_id, token.experiment) == (
            event["decision_id"],
            event["experiment"],
        ):
            out[event["id"]] = token
    return out


def credit_from_tokens(
    conn: Connection,
    *,
    cells: Cells,
    specs: dict[str, ExperimentSpec],
    result: IngestResult,
    rows: dict[str, dict[str, Any]],
    tokens: dict[str, DecisionToken],
) -> None:
    """Credit outcomes to the cells their tokens name: the window check is local, nothing waits.

    What each decision already received comes from its earlier credited outcomes (binary rewards
    count once per decision); the exposure, if stored, gets the reward too (evaluation reads it).
    """
    already, seen = _already_credited(conn, sorted({t.decision_id for t in tokens.values()}))
    updates: list[dict[str, Any]] = []
    added_to: dict[str, list[Any]] = {}  # decision -> [reward, outcomes] for its exposure
    for event_id in sorted(tokens, key=lambda i: (rows[i]["ts_ms"], i)):
        token, row = tokens[event_id], rows[event_id]
        spec = specs.get(token.experiment)
        if spec is None:
            result.pending += 1  # an experiment this store does not know (yet): kept, not credited
            continue
        if row["ts_ms"] - token.ts_ms > spec.reward.window_s * 1000:
            updates.append({"event_id": event_id, "status": "late", "credited": None, "cell": None})
            result.late += 1
            cells.bump(token.experiment, "late_outcomes")
            continue
        prior = already.get(token.decision_id, 0.0)
        reward = _reward(spec, row["value"], prior)
        status = "joined"
        if reward <= 0 and spec.reward.kind == "binary" and seen[token.decision_id] > 0:
            status = "extra"
            cells.bump(token.experiment, "extra_outcomes")
        already[token.decision_id] = prior + reward
        seen[token.decision_id] += 1
        result.joined += 1
        cell = None
        if token.reason == "personalized":
            path = json.dumps(path_of(spec, token.cell))
            decided = min(token.ts_ms, cells.now_ms) if cells.now_ms is not None else token.ts_ms
            cell = json.dumps([path, token.arm, decided])
            if reward > 0:
                cells.add(token.experiment, path, token.arm, ts=decided, n=0.0, r=reward)
        updates.append({"event_id": event_id, "status": status, "credited": reward, "cell": cell})
        added = added_to.setdefault(token.decision_id, [0.0, 0])
        added[0] += reward
        added[1] += 1
    bulk.update_rows(conn, outcomes, "event_id", updates)
    bulk.update_rows(
        conn,
        exposures,
        "decision_id",
        [{"decision_id": d, "reward": r, "outcomes": n} for d, (r, n) in sorted(added_to.items())],
        add=("reward", "outcomes"),
    )


def _already_credited(conn: Connection, decisions: list[str]) -> tuple[dict[str, float], Counter[str]]:
    """Per decision: the reward its earlier outcomes credited, and how many outcomes it had."""
    already: dict[str, float] = {}
    seen: Counter[str] = Counter()
    for part in bulk.parts(conn, decisions):
        for decision_id, credited in conn.execute(
            select(outcomes.c.decision_id, outcomes.c.credited).where(
                bulk.member(conn, outcomes.c.decision_id, part), outcomes.c.credited.is_not(None)
            )
        ):
            already[decision_id] = already.get(decision_id, 0.0) + credited
            seen[decision_id] += 1
        # Outcomes joined before migration 0005 carry no ``credited``; their exposure's reward holds it.
        for decision_id, reward, count in conn.execute(
            select(exposures.c.decision_id, exposures.c.reward, exposures.c.outcomes).where(
                bulk.member(conn, exposures.c.decision_id, part)
            )
        ):
            already[decision_id] = max(already.get(decision_id, 0.0), float(reward))
            seen[decision_id] = max(seen[decision_id], int(count))
    return already, seen


def waiting_for(conn: Connection, decision_ids: list[str]) -> list[Any]:
    """What earlier outcomes left for these new exposures, in one query: the pending ones (returned,
    to be joined now), and the rewards already credited from tokens, which the exposures take
    (evaluation reads them there; the cells have them already)."""
    pending: list[Any] = []
    credited: dict[str, list[Any]] = {}
    for part in bulk.parts(conn, decision_ids):
        for row in conn.execute(
            select(
                outcomes.c.event_id,
                outcomes.c.decision_id,
                outcomes.c.value,
                outcomes.c.ts_ms,
                outcomes.c.status,
                outcomes.c.credited,
            ).where(
                bulk.member(conn, outcomes.c.decision_id, part),
                or_(outcomes.c.status == "pending", outcomes.c.credited.is_not(None)),
            )
        ):
            if row.credited is not None:
                sums = credited.setdefault(row.decision_id, [0.0, 0])
                sums[0] += row.credited
                sums[1] += 1
            elif row.status == "pending":
                pending.append(row)
    bulk.update_rows(
        conn,
        exposures,
        "decision_id",
        [{"decision_id": d, "reward": r, "outcomes": n} for d, (r, n) in sorted(credited.items())],
    )
    return pending
