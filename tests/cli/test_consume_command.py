"""`perch consume`: its arguments, and one drain of a directory queue through the real command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select

from cli.main import main
from control_plane.events.queues import DirectoryQueue
from control_plane.experiments import ExperimentSpec
from control_plane.storage.schema import exposures
from control_plane.storage.store import Store
from core import encode_messages

SECRET = "edge-secret-0123456789"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "PERCH_DATA_DIR": str(tmp_path / "data"),
        "PERCH_DATABASE_URL": f"sqlite:///{tmp_path / 'perch.db'}",
        "PERCH_EDGE_SECRET": SECRET,
        "PERCH_ADMIN_TOKEN": "admin-token-0123456789",
        "PERCH_UNIT_SALT": "salt",
        "PERCH_CF_ACCOUNT_ID": "",
        "PERCH_CF_API_TOKEN": "",
    }


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ([], "exactly one of --queue-dir DIR or --cloudflare-queue QUEUE_ID"),
        (["--queue-dir", "q", "--cloudflare-queue", "abc"], "exactly one of"),
        (["--cloudflare-queue", "abc"], "needs PERCH_CF_ACCOUNT_ID and PERCH_CF_API_TOKEN"),
    ],
)
def test_a_consumer_needs_exactly_one_usable_source(env: dict[str, str], args: list[str], said: str) -> None:
    result = CliRunner().invoke(main, ["consume", *args], env=env)
    assert result.exit_code == 1 and said in result.output


def test_until_empty_drains_the_queue_and_reports_its_counts(env: dict[str, str], tmp_path: Path) -> None:
    store = Store.from_url(env["PERCH_DATABASE_URL"], "salt")
    store.migrate()
    store.create_experiment(
        ExperimentSpec.from_dict({"key": "hero", "arms": [{"key": "a"}, {"key": "b"}], "default_arm": "a"}), 1
    )
    events = [
        {
            "type": "exposure",
            "id": f"x-{i:032x}",
            "ts": 1_000,
            "decision_id": f"{i:032x}",
            "experiment": "hero",
            "arm": "b",
            "unit": f"u-{i}",
            "propensity": 0.5,
            "reason": "personalized",
            "segment": "all",
            "snapshot_version": 1,
            "context": {},
        }
        for i in range(1, 51)
    ]
    queue = DirectoryQueue(tmp_path / "q")
    (messages,) = encode_messages(SECRET, events, now_s=1, batch_id="b")
    queue.send_batch([*messages, "not a message"])
    result = CliRunner().invoke(main, ["consume", "--queue-dir", str(queue.path), "--until-empty"], env=env)
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["accepted"]["exposure"] == 50 and counts["bad_messages"] == 1
    engine = create_engine(env["PERCH_DATABASE_URL"])
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(exposures)).scalar() == 50
    engine.dispose()
    store.engine.dispose()
    assert queue.depth().total == 0
