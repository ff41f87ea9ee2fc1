"""control_plane.storage.bulk: the ingest path's statements, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from sqlalchemy import select

from control_plane.storage import bulk
from control_plane.storage.schema import exposures, stat_deltas
from control_plane.storage.store import Store


def _row(i: int, **overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "decision_id": f"{i:032x}",
        "experiment": "hero",
        "arm": "a",
        "unit_hash": None,
        "path": '["it\\u0027s", "50%"]',  # quotes and a percent sign travel as data, never as SQL
        "segment": None,
        "reason": "personalized",
        "propensity": 0.5,
        "snapshot_version": 1,
        "ts_ms": 1_000 + i,
        "reward": 0.0,
        "outcomes": 0,
    }
    row.update(overrides)
    return row


def test_insert_new_returns_exactly_the_rows_it_inserted(store: Store) -> None:
    with store.write() as conn:
        assert bulk.insert_new(conn, exposures, "decision_id", [_row(i) for i in range(1, 1201)]) == {
            f"{i:032x}" for i in range(1, 1201)
        }
        again = bulk.insert_new(conn, exposures, "decision_id", [_row(i, arm="b") for i in range(1190, 1210)])
        assert again == {f"{i:032x}" for i in range(1201, 1210)}
        assert (
            conn.execute(select(exposures.c.arm).where(exposures.c.decision_id == f"{1190:032x}")).scalar()
            == "a"
        )
        assert conn.execute(select(exposures.c.path).limit(1)).scalar() == '["it\\u0027s", "50%"]'


def test_update_rows_sets_and_adds_by_key(store: Store) -> None:
    with store.write() as conn:
        bulk.insert_new(conn, exposures, "decision_id", [_row(i) for i in range(1, 4)])
        bulk.update_rows(
            conn, exposures, "decision_id", [{"decision_id": f"{1:032x}", "reward": 0.5, "outcomes": 2}]
        )
        rows = [{"decision_id": f"{i:032x}", "reward": 1.0, "outcomes": 1} for i in (1, 2)]
        bulk.update_rows(conn, exposures, "decision_id", rows, add=("reward", "outcomes"))
        got = {d: r for d, r in conn.execute(select(exposures.c.decision_id, exposures.c.reward))}
    assert got == {f"{1:032x}": 1.5, f"{2:032x}": 1.0, f"{3:032x}": 0.0}


def test_member_finds_values_in_one_array_or_in_chunks(store: Store) -> None:
    with store.write() as conn:
        bulk.insert_new(conn, exposures, "decision_id", [_row(i) for i in range(1, 1500)])
        wanted = [f"{i:032x}" for i in range(0, 3000, 2)]
        found = {
            d
            for part in bulk.parts(conn, wanted)
            for d in conn.execute(
                select(exposures.c.decision_id).where(bulk.member(conn, exposures.c.decision_id, part))
            ).scalars()
        }
        assert found == {f"{i:032x}" for i in range(2, 1500, 2)}
        bulk.insert_rows(
            conn,
            stat_deltas,
            [
                {
                    "experiment": "hero",
                    "path": "[]",
                    "arm": "a",
                    "hour_ms": h,
                    "exposures": 1.0,
                    "reward": 0.0,
                    "decayed_exposures": 1.0,
                    "decayed_reward": 0.0,
                }
                for h in range(3)
            ],
        )
        assert conn.execute(select(stat_deltas.c.hour_ms).order_by(stat_deltas.c.id)).scalars().all() == [
            0,
            1,
            2,
        ]
