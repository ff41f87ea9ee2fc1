from __future__ import annotations

import pytest

from control_plane.storage.clickhouse import (
    Chdb,
    ClickHouseError,
    ClickHouseServer,
    executor_for,
    is_clickhouse_url,
    uuid_hex,
)


def test_parameters_survive_quotes_backslashes_and_arrays(chdb: Chdb) -> None:
    text = "a\\b\tc'd\ne"
    items = ["x'y", "z\\w", "", "é"]
    assert chdb.rows(
        "SELECT {s:String}, {a:Array(String)}, {n:Int64}, {f:Float64}",
        {"s": text, "a": items, "n": -5, "f": 0.1},
    ) == [(text, items, -5, 0.1)]


def test_uuids_come_back_as_uuids_and_take_hex_without_dashes(chdb: Chdb) -> None:
    ((value,),) = chdb.rows("SELECT toUUID({u:String})", {"u": "0123456789abcdef0123456789abcdef"})
    assert value.hex == "0123456789abcdef0123456789abcdef"


def test_uuid_hex_takes_every_form_a_driver_may_give() -> None:
    import uuid

    hex32 = "0123456789abcdef0123456789abcdef"
    forms = [uuid.UUID(hex32), bytes.fromhex(hex32), "01234567-89ab-cdef-0123-456789ABCDEF"]
    assert [uuid_hex(v) for v in forms] == [hex32] * 3  # bytes: pyarrow before 18 has no UUID type


def test_a_refused_statement_is_a_clickhouse_error_that_says_why(chdb: Chdb) -> None:
    with pytest.raises(ClickHouseError, match=r"ClickHouse refused.*UNKNOWN_TABLE"):
        chdb.rows("SELECT * FROM no_such_table_here")


def test_insert_with_a_token_seen_before_is_dropped(chdb: Chdb) -> None:
    chdb.command(
        f"CREATE TABLE `{chdb.database}`.t (k UInt64) ENGINE = MergeTree ORDER BY k "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    for _ in range(3):
        chdb.insert("t", ["k"], [(1,), (2,)], token="same")
    chdb.insert("t", ["k"], [(1,), (2,)], token="other")
    assert chdb.rows(f"SELECT count() FROM `{chdb.database}`.t") == [(4,)]


def test_one_data_path_per_process(chdb: Chdb, tmp_path: object) -> None:
    with pytest.raises(ClickHouseError, match="one data path per process"):
        Chdb(f"{tmp_path}/elsewhere")


@pytest.mark.parametrize(
    ("url", "kind", "fields"),
    [
        ("chdb:///var/lib/perch/ch", Chdb, {"path": "/var/lib/perch/ch", "database": "perch"}),
        ("chdb:///var/lib/perch/ch?database=events", Chdb, {"database": "events"}),
    ],
)
def test_executor_for_chdb_urls(url: str, kind: type, fields: dict[str, str], chdb: Chdb) -> None:
    # chDB is already open on the fixture's path in this process: same-path reuse is the point.
    url = url.replace("/var/lib/perch/ch", chdb.path)
    executor = executor_for(url)
    assert isinstance(executor, kind)
    for name, value in fields.items():
        assert getattr(executor, name) == value.replace("/var/lib/perch/ch", chdb.path)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("chdb://host/path", "three slashes, no host"),
        ("chdb:", "three slashes"),
        ("clickhouse:///db", "user:password@host"),
        ("mysql://x/y", "not a ClickHouse URL"),
    ],
)
def test_executor_for_refuses_what_it_cannot_use(url: str, message: str) -> None:
    with pytest.raises(ClickHouseError, match=message):
        executor_for(url)


def test_server_urls_are_parsed_without_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake_client(**kwargs: object) -> object:
        seen.update(kwargs)
        return object()

    import clickhouse_connect

    monkeypatch.setattr(clickhouse_connect, "get_client", fake_client)
    executor = executor_for("clickhouses://perch:s%40cret@ch.example:9440/events")
    assert isinstance(executor, ClickHouseServer)
    assert seen == {
        "host": "ch.example",
        "port": 9440,
        "username": "perch",
        "password": "s@cret",
        "database": "events",
        "secure": True,
        "autogenerate_session_id": False,
        "form_encode_query_params": True,
    }
    assert is_clickhouse_url("chdb:///x") and is_clickhouse_url("clickhouse://h/d")
    assert not is_clickhouse_url("postgresql://h/d") and not is_clickhouse_url("sqlite:///x")
