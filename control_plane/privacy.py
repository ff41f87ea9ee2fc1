"""A visitor's rights: see everything held about them, and have it erased.

Unit ids are only ever stored as keyed hashes, so both operations start by
hashing the id they are given, then follow stitches (an anonymous id that
became this user, or the user an anonymous id became) to every hash of the
same person.  Erasure takes the person's exposures and rewards back out of
the sufficient statistics (with the same decay arithmetic that put them in),
so the next snapshot's posteriors are as if they had never been seen.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, delete, or_, select

from control_plane.experiments import ExperimentSpec
from control_plane.schema import experiments, exposures, outcomes, stats, stitches
from control_plane.store import Store, decay

__all__ = ["erase", "export"]


def _hashes(conn: Connection, store: Store, unit: str) -> set[str]:
    first = store.hash_unit(unit)
    assert first is not None
    found, frontier = {first}, {first}
    while frontier:  # stitches form small graphs: follow them to a fixed point
        rows = conn.execute(
            select(stitches.c.anonymous_hash, stitches.c.user_hash).where(
                or_(stitches.c.anonymous_hash.in_(frontier), stitches.c.user_hash.in_(frontier))
            )
        ).all()
        frontier = {h for row in rows for h in row} - found
        found |= frontier
    return found


def export(store: Store, unit: str) -> dict[str, Any]:
    """Everything stored about ``unit`` (and ids stitched to it)."""
    with store.engine.connect() as conn:
        hashes = _hashes(conn, store, unit)
        exposure_rows = conn.execute(
            select(exposures).where(exposures.c.unit_hash.in_(hashes)).order_by(exposures.c.ts_ms)
        ).all()
        decision_ids = [r.decision_id for r in exposure_rows]
        outcome_rows = conn.execute(
            select(outcomes)
            .where(or_(outcomes.c.unit_hash.in_(hashes), outcomes.c.decision_id.in_(decision_ids)))
            .order_by(outcomes.c.ts_ms)
        ).all()
        stitch_rows = conn.execute(
            select(stitches).where(
                or_(stitches.c.anonymous_hash.in_(hashes), stitches.c.user_hash.in_(hashes))
            )
        ).all()

    def rows(result: Any) -> list[dict[str, Any]]:
        out = []
        for row in result:
            item = dict(row._mapping)
            if "path" in item:
                item["path"] = json.loads(item["path"])
            out.append(item)
        return out

    return {
        "unit_hashes": sorted(hashes),
        "exposures": rows(exposure_rows),
        "outcomes": rows(outcome_rows),
        "stitches": rows(stitch_rows),
    }


def erase(store: Store, unit: str) -> dict[str, int]:
    """Delete ``unit``'s events and take their contribution out of the statistics, in one transaction."""
    with store.write() as conn:
        hashes = _hashes(conn, store, unit)
        rows = conn.execute(select(exposures).where(exposures.c.unit_hash.in_(hashes))).all()
        specs = {
            key: ExperimentSpec.from_dict(json.loads(doc))
            for key, doc in conn.execute(
                select(experiments.c.key, experiments.c.spec).where(
                    experiments.c.key.in_({r.experiment for r in rows})
                )
            )
        }
        touched: set[str] = set()
        for row in rows:
            spec = specs.get(row.experiment)
            if spec is None or row.reason != "personalized":
                continue  # never counted: nothing to take back
            key = (
                (stats.c.experiment == row.experiment) & (stats.c.path == row.path) & (stats.c.arm == row.arm)
            )
            cell = conn.execute(select(stats).where(key).with_for_update()).first()
            if cell is None:
                continue
            weight = decay(1.0, row.ts_ms, cell.ref_ms, spec.half_life_s)
            conn.execute(
                stats.update()
                .where(key)
                .values(
                    exposures=max(cell.exposures - 1.0, 0.0),
                    reward=max(cell.reward - row.reward, 0.0),
                    decayed_exposures=max(cell.decayed_exposures - weight, 0.0),
                    decayed_reward=max(cell.decayed_reward - row.reward * weight, 0.0),
                )
            )
            touched.add(row.experiment)
        decision_ids = [r.decision_id for r in rows]
        gone_outcomes = conn.execute(
            delete(outcomes).where(
                or_(outcomes.c.unit_hash.in_(hashes), outcomes.c.decision_id.in_(decision_ids))
            )
        ).rowcount
        gone_exposures = conn.execute(delete(exposures).where(exposures.c.unit_hash.in_(hashes))).rowcount
        gone_stitches = conn.execute(
            delete(stitches).where(
                or_(stitches.c.anonymous_hash.in_(hashes), stitches.c.user_hash.in_(hashes))
            )
        ).rowcount
        for experiment in touched:
            store.bump(conn, experiment, "updates")  # the next cycle republishes without them
            store.bump(conn, experiment, "erasures")
    return {"exposures": gone_exposures, "outcomes": gone_outcomes, "stitches": gone_stitches}
