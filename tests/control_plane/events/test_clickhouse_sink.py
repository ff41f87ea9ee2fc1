"""`perch consume` into ClickHouse (chDB): exactly once whatever the queue and the consumer do."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from control_plane.events.clickhouse_sink import ClickHouseSink
from control_plane.events.consume import Consumer
from control_plane.events.queues import DirectoryQueue
from control_plane.storage.clickhouse import Chdb, ClickHouseError
from control_plane.storage.clickhouse_events import EventLog
from control_plane.storage.store import Store
from tests.control_plane.events.test_consume import SECRET, enqueue, expected_cells, traffic
from tests.factories import NOW, UNIT_KEY, spec
from tests.procs import start_perch


@pytest.fixture
def hero(store: Store) -> Store:
    store.create_experiment(spec(), NOW)
    return store


def _now() -> int:
    # ClickHouse's TTL runs on the real clock, not the tests' fixed one: events of today.
    return int(time.time() * 1000)


def _log_for(store: Store, chdb: Chdb) -> EventLog:
    """The event log on ``chdb``, as the store's (what `perch consume --events-url` sets up)."""
    log = EventLog(chdb)
    log.migrate()
    store.events = log
    return log


def _consume(store: Store, log: EventLog, events: list[dict[str, Any]], where: Path) -> None:
    queue = DirectoryQueue(where)
    enqueue(queue, events)
    Consumer(store, queue, SECRET, now_ms=_now, sleep=lambda s: None, sink=ClickHouseSink(store, log)).run(
        until_empty=True
    )


def _sums(log: EventLog) -> dict[tuple[str, str], tuple[float, float]]:
    return {key: (t.exposures, t.reward) for key, t in log.totals("hero").items()}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_queue_with_redeliveries_is_stored_once_in_clickhouse(
    hero: Store, chdb: Chdb, tmp_path: Path
) -> None:
    log = EventLog(chdb)
    log.migrate()
    queue = DirectoryQueue(tmp_path / "q")
    events = traffic(1500, seed=3, now=_now())
    sent = enqueue(queue, events, per_message=25)
    rng = random.Random(4)
    queue.send_batch([m for m in sent if rng.random() < 0.1])  # 10 % redelivered
    sink = ClickHouseSink(hero, log)
    stats = Consumer(
        hero, queue, SECRET, now_ms=lambda: _now() + 60_000, sleep=lambda s: None, sink=sink, max_events=300
    ).run(until_empty=True)
    assert queue.depth().total == 0
    assert stats.duplicates > 0 and stats.failed_groups == 0
    assert log.counts("hero") == {
        "exposures": sum(e["type"] == "exposure" for e in events),
        "outcomes_joined": sum(e["type"] == "outcome" for e in events),
    }
    assert _sums(log) == expected_cells(events)
    assert log.recompute("hero") == log.totals("hero")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_group_clickhouse_refuses_is_left_for_redelivery(
    hero: Store, chdb: Chdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EventLog(chdb)
    log.migrate()
    queue = DirectoryQueue(tmp_path / "q")
    sent = enqueue(queue, traffic(50, seed=5, now=_now()), per_message=25)

    def down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("ClickHouse is down")

    monkeypatch.setattr(log.ch, "insert", down)
    stats = Consumer(hero, queue, SECRET, sleep=lambda s: None, sink=ClickHouseSink(hero, log)).run(
        until_empty=True
    )
    assert stats.failed_groups == 1 and stats.accepted == 0
    assert queue.depth().leased == len(sent)  # unacknowledged: back after the lease
    assert log.counts("hero") == {"exposures": 0}


_READ = """
import json, sys
from control_plane.storage.clickhouse import executor_for
from control_plane.storage.clickhouse_events import EventLog
log = EventLog(executor_for(sys.argv[1]))
def rows(sums):
    return sorted([*k, t.exposures, t.reward] for k, t in sums.items())
print(json.dumps({"counts": log.counts("hero"), "totals": rows(log.totals("hero")),
                  "recompute": rows(log.recompute("hero"))}))
"""


@pytest.mark.process
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_consumer_killed_mid_group_then_drained_counts_every_event_once(
    hero: Store, db_url: str, tmp_path: Path
) -> None:
    """kill -9 while groups are being stored (10 % of messages delivered twice); a second consumer
    drains the rest. chDB serves one process per data path, so the consumers take turns."""
    from core import LocalKV, profile_key, signal_event, unit_tag

    queue = DirectoryQueue(tmp_path / "q")
    events = traffic(6000, seed=7, now=_now())
    browsed = [
        signal_event("ann", unit_tag(SECRET, "ann"), "page_view", _now() - i, category="books")
        for i in range(3)
    ]
    sent = enqueue(queue, [*events, *browsed], per_message=20)
    rng = random.Random(8)
    queue.send_batch([m for m in sent if rng.random() < 0.1])
    total = queue.depth().total
    events_url = f"chdb://{tmp_path / 'ch'}"
    env = {
        "PERCH_DATABASE_URL": db_url,
        "PERCH_EVENTS_URL": events_url,
        "PERCH_EDGE_SECRET": SECRET,
        "PERCH_ADMIN_TOKEN": "admin-token-0123456789",
        "PERCH_UNIT_SALT": UNIT_KEY,
        "PERCH_DATA_DIR": str(tmp_path / "data"),
    }
    args = ["consume", "--queue-dir", str(queue.path), "--max-events", "400", "--visibility-timeout", "2"]
    victim = start_perch(args, env, tmp_path / "a.log")
    deadline = time.monotonic() + 120
    while queue.depth().total > total * 0.7:  # some groups stored and acknowledged
        assert victim.poll() is None, (tmp_path / "a.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert queue.depth().total > 0, "the victim should die with work left"
    time.sleep(2.1)  # its leases expire
    assert hero.latest_snapshot("hero") is None
    # The last one also learns and publishes as it stops (chDB: from the process that holds it).
    # ... named on the command line this time instead of PERCH_EVENTS_URL.
    flags = [*args, "--until-empty", "--publish", "--events-url", events_url]
    env_without = {k: v for k, v in env.items() if k != "PERCH_EVENTS_URL"}
    last = start_perch(flags, env_without, tmp_path / "b.log")
    assert last.wait(timeout=180) == 0, (tmp_path / "b.log").read_text()
    assert queue.depth().total == 0
    assert hero.latest_snapshot("hero") is not None, (tmp_path / "b.log").read_text()
    # ... and builds and publishes the profiles (serve has no schedule with events in chDB).
    assert LocalKV(tmp_path / "data").get(profile_key(unit_tag(SECRET, "ann"))) is not None
    read = subprocess.run(
        [sys.executable, "-c", _READ, events_url], capture_output=True, text=True, check=True, timeout=120
    )
    got = json.loads(read.stdout)
    assert got["counts"] == {
        "exposures": sum(e["type"] == "exposure" for e in events),
        "outcomes_joined": sum(e["type"] == "outcome" for e in events),
    }
    expected = sorted([*k, n, r] for k, (n, r) in expected_cells(events).items())
    assert got["totals"] == expected
    assert got["recompute"] == expected


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_learner_reads_its_cells_and_visitors_from_clickhouse(
    hero: Store, chdb: Chdb, tmp_path: Path
) -> None:
    from control_plane.distribution.kv_publishers import LocalKVPublisher
    from control_plane.learning.publish import publish_experiment
    from control_plane.metrics import Metrics
    from core import LocalKV

    log = _log_for(hero, chdb)
    kv = LocalKVPublisher(LocalKV(tmp_path / "kv"))
    record = hero.get_experiment("hero")
    assert record is not None

    def publish() -> str:
        result = publish_experiment(
            hero, kv, record, Metrics(), now_ms=_now, force=False, sleep=lambda _: None
        )
        latest = hero.latest_snapshot("hero")
        assert latest is not None
        return f"{result.published}:{latest.digest}"

    empty = publish()
    assert publish() == empty.replace("True", "False")  # nothing new: nothing published
    events = traffic(600, seed=9, now=_now())
    _consume(hero, log, events, tmp_path / "q")
    assert hero.cells(record.spec, _now()) == log.cells("hero", record.spec.half_life_s, _now())
    units: dict[tuple[str, ...], set[str]] = {}
    for e in events:
        if e["type"] == "exposure" and e["reason"] == "personalized":
            units.setdefault((e["context"]["device"], e["context"]["source"]), set()).add(e["unit"])
    assert hero.units_per_path("hero") == {k: len(v) for k, v in units.items()}
    after = publish()
    assert after.startswith("True") and after != empty


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_visitor_is_exported_and_erased_from_clickhouse_and_the_cells(
    hero: Store, chdb: Chdb, tmp_path: Path
) -> None:
    from control_plane.storage import privacy

    log = _log_for(hero, chdb)
    events = traffic(400, seed=11, now=_now())
    _consume(hero, log, events, tmp_path / "q")
    # A visitor who converted, by a token or by the join: all of them go.
    converted = {e["decision_id"] for e in events if e["type"] == "outcome"}
    (victim,) = [e for e in events if e["type"] == "exposure" and e["decision_id"] in converted][:1]
    unit = victim["unit"]
    held = privacy.export(hero, unit)
    assert [e["decision_id"] for e in held["exposures"]] == [victim["decision_id"]]
    assert [o["decision_id"] for o in held["outcomes"]] == [victim["decision_id"]]
    assert held["exposures"][0]["path"] == [victim["context"]["device"], victim["context"]["source"]]

    assert privacy.erase(hero, unit) == {
        "exposures": 1,
        "outcomes": 1,
        "stitches": 0,
        "signals": 0,
        "attributes": 0,
    }
    remaining = [e for e in events if e.get("unit") != unit]
    assert _sums(log) == {k: v for k, v in expected_cells(remaining).items() if v != (0.0, 0.0)} | {
        k: (0.0, 0.0) for k in expected_cells(events) if k not in expected_cells(remaining)
    }
    assert privacy.export(hero, unit) == {
        "unit_hashes": held["unit_hashes"],
        "exposures": [],
        "outcomes": [],
        "stitches": [],
        "signals": [],
        "attributes": [],
        "profiles": [],
    }
    assert privacy.erase(hero, unit) == {
        "exposures": 0,
        "outcomes": 0,
        "stitches": 0,
        "signals": 0,
        "attributes": 0,
    }  # again: nothing


def test_with_events_in_a_chdb_held_elsewhere_privacy_requests_say_where(store: Store) -> None:
    from control_plane.storage import privacy
    from control_plane.storage.store import Conflict

    store.events_elsewhere = "the events are in chDB (chdb:///x), which `perch consume` holds"
    with pytest.raises(
        Conflict, match="cannot be exported or erased from this process: the events are in chDB"
    ):
        privacy.export(store, "someone")
    with pytest.raises(Conflict, match="perch consume"):
        privacy.erase(store, "someone")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_report_reads_the_same_figures_from_clickhouse_as_from_sql(
    hero: Store, chdb: Chdb, tmp_path: Path
) -> None:
    from control_plane.learning.delays import delay_cdf, recent_cells, young_exposures
    from control_plane.learning.evaluation import logged_exposures
    from control_plane.learning.report import build_report
    from control_plane.storage.store import Store as SqlStore

    events = traffic(800, seed=12, now=_now())
    sql = SqlStore.from_url(f"sqlite:///{tmp_path / 'sql.db'}", UNIT_KEY)
    sql.migrate()
    sql.create_experiment(spec(), NOW)
    log = EventLog(chdb)
    log.migrate()
    hero.events = log
    for store, sink in ((sql, None), (hero, ClickHouseSink(hero, log))):
        queue = DirectoryQueue(tmp_path / f"q-{id(store)}")
        enqueue(queue, events)
        Consumer(store, queue, SECRET, now_ms=_now, sleep=lambda s: None, sink=sink).run(until_empty=True)
    record = hero.get_experiment("hero")
    assert record is not None
    from_sql, from_clickhouse = (build_report(s, record, _now()).to_dict() for s in (sql, hero))
    for part in ("arms", "holdout", "segments", "outcomes"):
        assert from_clickhouse[part] == from_sql[part], part
    assert from_sql["holdout"]["personalized"]["exposures"] > 0
    # What the promotion gate and the off-policy estimates read: the same logged exposures.
    since, until = _now() - 2 * 3_600_000, _now() - 600_000
    logged = [logged_exposures(s, "hero", since, 300, until_ms=until) for s in (sql, hero)]
    assert logged[1] == logged[0] and len(logged[0]) == 300
    assert sum(e.reward for e in logged[0]) > 0
    # What the delay correction and the contextual drift update read: the same.
    now = _now()
    assert delay_cdf(hero, record.spec, now)[1:] == delay_cdf(sql, record.spec, now)[1:]
    young = [young_exposures(s, record.spec, now, 1_800_000) for s in (hero, sql)]
    assert [{k: sorted(v) for k, v in y.items()} for y in young] == [
        {k: sorted(v) for k, v in young[1].items()}
    ] * 2  # the same buckets, in any order (they are summed)
    assert recent_cells(hero, record.spec, 250) == recent_cells(sql, record.spec, 250)
    assert delay_cdf(hero, record.spec, now)[1] > 0 and recent_cells(hero, record.spec, 250)[1] is not None


@pytest.mark.process
def test_a_bad_events_url_is_refused_with_what_is_expected(tmp_path: Path) -> None:
    env = {
        "PERCH_EDGE_SECRET": SECRET,
        "PERCH_ADMIN_TOKEN": "admin-token-0123456789",
        "PERCH_DATA_DIR": str(tmp_path / "data"),
    }
    args = ["consume", "--queue-dir", str(tmp_path / "q"), "--until-empty", "--events-url", "mysql://x/y"]
    proc = start_perch(args, env, tmp_path / "c.log")
    assert proc.wait(timeout=60) != 0
    assert (
        "PERCH_EVENTS_URL='mysql://x/y', must be chdb:///path or clickhouse://"
        in (tmp_path / "c.log").read_text()
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_contextual_exposures_get_their_snapshots_exact_propensity_in_clickhouse(
    store: Store, chdb: Chdb, tmp_path: Path
) -> None:
    """As on the SQL path (tests/control_plane/http/test_contextual_app.py): the edge logs no
    propensity for a contextual decision; the consumer computes it from the snapshot that decided."""
    from control_plane.distribution.kv_publishers import LocalKVPublisher
    from control_plane.events.ingest import ingest
    from control_plane.experiments import ExperimentSpec
    from control_plane.learning.publish import publish_experiment
    from control_plane.metrics import Metrics
    from control_plane.propensity import context_probabilities
    from core import LocalKV, decode_snapshot, snapshot_key
    from tests.factories import exposure

    spec_ = ExperimentSpec.create(
        {
            "key": "hero",
            "arms": [{"key": "a"}, {"key": "b"}, {"key": "c"}],
            "default_arm": "a",
            "features": ["device", "source"],
            "floor": 0.1,
        }
    )
    assert spec_.model == "contextual"
    record = store.create_experiment(spec_, NOW)
    rng = random.Random(13)

    def events(first: int, n: int, version: int | None) -> list[dict[str, Any]]:
        out = []
        for i in range(first, first + n):
            ctx = {"device": rng.choice(["desktop", "mobile"]), "source": rng.choice(["search", "social"])}
            event = exposure(i, arm=rng.choice("abc"), context=ctx, ts=_now() - 60_000 + i)
            event["propensity"], event["snapshot_version"] = None, version
            out.append(event)
        return out

    ingest(store, events(0, 300, None), None, _now())  # learnt from, through the SQL path
    kv = LocalKV(tmp_path / "kv")
    publish_experiment(
        store, LocalKVPublisher(kv), record, Metrics(), now_ms=_now, force=True, sleep=lambda _: None
    )
    snap = decode_snapshot(kv.get(snapshot_key("hero")) or b"")
    log = _log_for(store, chdb)
    sink = ClickHouseSink(store, log)
    queue = DirectoryQueue(tmp_path / "q")
    enqueue(queue, events(10_000, 40, snap.version) + events(20_000, 5, snap.version + 50))
    Consumer(store, queue, SECRET, now_ms=_now, sleep=lambda s: None, sink=sink).run(until_empty=True)
    rows = chdb.rows(
        f"SELECT arm, path, propensity, decision_id FROM `{chdb.database}`.exposures FINAL "
        "WHERE experiment = 'hero'"
    )
    known = [r for r in rows if r[3].hex < f"{20_000:032x}"]
    assert len(known) == 40 and len(rows) == 45
    for arm, path, propensity, _ in known:
        context = dict(zip(["device", "source"], json.loads(path), strict=True))
        expected = context_probabilities(snap, context)[snap.arm_index[arm]]
        assert propensity == pytest.approx(expected, rel=1e-6)  # stored as Float32
    assert all(r[2] is None for r in rows if r[3].hex >= f"{20_000:032x}")
    assert sink.propensity_unknown == 5


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_signed_in_person_is_erased_with_the_anonymous_ids_stitched_through_the_queue(
    hero: Store, chdb: Chdb, tmp_path: Path
) -> None:
    from control_plane.storage import privacy
    from core import stitch_event

    log = _log_for(hero, chdb)
    events = traffic(60, seed=14, now=_now())
    anonymous = [e["unit"] for e in events if e["type"] == "exposure"][:3]
    stitched = [stitch_event(unit, "user-42", _now()) for unit in anonymous]
    _consume(hero, log, [*events, *stitched], tmp_path / "q")
    held = privacy.export(hero, "user-42")
    assert len(held["stitches"]) == 3 and len(held["exposures"]) == 3
    # ClickHouse refuses the first attempt: the stitches must still be there for the retry.
    real = log.erase

    def down(hashes: list[str]) -> dict[str, int]:
        raise ClickHouseError("the delete timed out")

    log.erase = down  # type: ignore[method-assign]
    with pytest.raises(ClickHouseError):
        privacy.erase(hero, "user-42")
    log.erase = real  # type: ignore[method-assign]
    assert privacy.erase(hero, "user-42")["exposures"] == 3
    assert all(privacy.export(hero, unit)["exposures"] == [] for unit in anonymous)
    assert log.counts("hero")["exposures"] == sum(e["type"] == "exposure" for e in events) - 3


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_with_a_clickhouse_server_serve_takes_posted_events_into_it(
    hero: Store, chdb: Chdb, tmp_path: Path
) -> None:
    """The edge's fallback POST reaches the same event log as the queue (chDB stands in for a server)."""
    from control_plane.distribution.kv_publishers import LocalKVPublisher
    from control_plane.http.app import create_app
    from control_plane.settings import Settings
    from core import LocalKV, encode_batch, sign
    from tests.control_plane.http.test_app import ApiClient

    log = _log_for(hero, chdb)
    settings = Settings(admin_token="admin-token-0123456789", edge_secret=SECRET, data_dir=tmp_path)
    client = ApiClient(
        create_app(settings, hero, LocalKVPublisher(LocalKV(tmp_path)), now_ms=_now, schedule=False)
    )
    events = traffic(30, seed=15, now=_now())
    body = encode_batch(events)
    headers = {"X-Perch-Signature": sign(SECRET, body, _now() // 1000), "content-type": "application/json"}
    first = client.post("/v1/events", content=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["accepted"]["exposure"] == 30
    again = client.post("/v1/events", content=body, headers=headers)  # a resend adds nothing
    assert again.status_code == 200 and again.json()["duplicates"] == len(events)
    assert _sums(log) == expected_cells(events)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_events_of_an_experiment_the_database_does_not_know_are_skipped_and_counted(
    hero: Store, chdb: Chdb, tmp_path: Path
) -> None:
    log = _log_for(hero, chdb)
    stray = [{**e, "experiment": "nobody"} for e in traffic(20, seed=16, now=_now())]
    sink = ClickHouseSink(hero, log)
    queue = DirectoryQueue(tmp_path / "q")
    enqueue(queue, stray)
    Consumer(hero, queue, SECRET, now_ms=_now, sleep=lambda s: None, sink=sink).run(until_empty=True)
    assert sink.unknown_experiment == len(stray)
    assert log.totals("nobody") == {} and log.counts("nobody") == {"exposures": 0}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_signals_through_the_queue_stay_in_the_database_for_the_profile_builder(
    hero: Store, chdb: Chdb, tmp_path: Path
) -> None:
    from control_plane.profiles.builder import ProfileSettings, build_cycle
    from control_plane.storage import privacy
    from core import signal_event, unit_tag

    log = _log_for(hero, chdb)
    # One clock reading: a clock ticking between the signals could give two of them one time, one id.
    now = _now()
    signals = [
        signal_event("ann", unit_tag(SECRET, "ann"), "page_view", now - i, category="books") for i in range(3)
    ]
    _consume(hero, log, [*traffic(40, seed=15, now=_now()), *signals, *signals[:1]], tmp_path / "q")
    assert [s["category"] for s in privacy.export(hero, "ann")["signals"]] == [
        "books"
    ] * 3  # the repeat stored once
    assert build_cycle(hero, ProfileSettings(), _now()).built == 1
