"""ClickHouse, embedded (chDB) or a server, behind one small executor protocol.

``chdb:///path`` runs the ClickHouse engine in this process on the data at ``path`` (one process
per path: chDB takes the directory for itself); ``clickhouse://user:pass@host:8123/db`` talks to a
server or a cluster over HTTP through clickhouse-connect. Both take the same SQL text, with
ClickHouse's own server-side parameters (``{name:Type}``), so what the tests run on chDB is what
production runs on a server; only how rows travel differs (Arrow in-process, Native over HTTP).

Every insert carries a deduplication token: ClickHouse drops a block whose token it has seen in
the table's deduplication window, so a retried insert (a consumer killed after inserting, before
acknowledging its messages) is stored once. The window must be set on every table, including
materialized-view targets (control_plane.storage.clickhouse_schema), or the retry is counted again.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from core import PerchError

__all__ = [
    "Chdb",
    "ClickHouseError",
    "ClickHouseServer",
    "Executor",
    "dedup_token",
    "executor_for",
    "is_clickhouse_url",
    "uuid_hex",
]

SCHEMES = ("chdb", "clickhouse", "clickhouses")


class ClickHouseError(PerchError, RuntimeError):
    """ClickHouse refused a statement, or a URL names no usable ClickHouse."""


class Executor(Protocol):
    """What the ClickHouse store needs from a connection: statements, rows, and token-deduplicated inserts."""

    database: str

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns nothing (DDL, mutations, OPTIMIZE)."""

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a query; its rows as tuples of Python values (UUIDs as :class:`uuid.UUID`)."""

    def insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, token: str
    ) -> None:
        """Insert ``rows`` as one block, dropped if ``token`` was already inserted into ``table``."""

    def close(self) -> None: ...


def dedup_token(kind: str, ids: Iterable[str]) -> str:
    """An insert's deduplication token: the same rows, the same token, so a retried insert is dropped."""
    digest = hashlib.sha256()
    for ident in sorted(ids):
        digest.update(ident.encode() + b"\0")
    return f"perch:{kind}:{digest.hexdigest()}"


def uuid_hex(value: object) -> str:
    """A UUID column's value as our 32 hex characters: a :class:`uuid.UUID` from either executor,
    16 raw bytes (pyarrow before 18 has no UUID type), or text."""
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, bytes) and len(value) == 16:
        return value.hex()
    return str(value).replace("-", "").lower()


def is_clickhouse_url(url: str) -> bool:
    return url.split(":", 1)[0] in SCHEMES


def executor_for(url: str) -> Executor:
    """The executor ``url`` names: ``chdb:///path[?database=perch]`` or ``clickhouse[s]://…/db``."""
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        if not parts.path or parts.netloc:
            raise ClickHouseError(f"{url!r}: expected chdb:///absolute/path/to/data (three slashes, no host)")
        return Chdb(unquote(parts.path), query.get("database", "perch"))
    if parts.scheme in ("clickhouse", "clickhouses"):
        if not parts.hostname:
            raise ClickHouseError(f"{url!r}: expected clickhouse://user:password@host:8123/database")
        return ClickHouseServer(
            host=parts.hostname,
            port=parts.port or (8443 if parts.scheme == "clickhouses" else 8123),
            username=unquote(parts.username or "default"),
            password=unquote(parts.password or ""),
            database=parts.path.strip("/") or "perch",
            secure=parts.scheme == "clickhouses",
        )
    raise ClickHouseError(f"{url!r}: not a ClickHouse URL (chdb:///path or clickhouse://host:8123/db)")


def _quote(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ClickHouseError(f"identifier {name!r}: letters, digits and '_' only")
    return f"`{name}`"


# chDB embeds one server per process, on one data path: every Chdb on that path shares its session.
_OPEN: dict[str, tuple[str, Any, threading.Lock]] = {}
_OPEN_LOCK = threading.Lock()


def _param(value: Any, nested: bool = False) -> str:
    """A query parameter as ClickHouse's text format has it (what the HTTP interface's clients send):
    chDB passes ``str(value)`` through, which no array of strings survives."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_param(v, True) for v in value) + "]"
    if isinstance(value, str):
        if not nested:  # the escaped (TSV) text form: a backslash starts an escape
            return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)


class Chdb:
    """The ClickHouse engine in this process (PyPI ``chdb``), on the data directory ``path``.

    chDB serves one session per process; statements are serialised here because a session is not
    safe to share between threads.
    """

    def __init__(self, path: str, database: str = "perch") -> None:
        try:
            from chdb import session
        except ImportError as exc:  # pragma: no cover - the extra is installed with dev
            raise ClickHouseError(
                "chdb:// needs the clickhouse extra: pip install 'perch[clickhouse]'"
            ) from exc
        self.path, self.database = path, database
        with _OPEN_LOCK:
            shared = _OPEN.get("session")
            if shared is not None and shared[0] != path:
                raise ClickHouseError(
                    f"chDB serves one data path per process: {shared[0]!r} is open, {path!r} was asked for"
                )
            if shared is None:
                shared = _OPEN["session"] = (path, session.Session(path), threading.Lock())  # type: ignore[no-untyped-call]
        self._session, self._lock = shared[1], shared[2]
        self._run(f"CREATE DATABASE IF NOT EXISTS {_quote(database)}")

    def _run(self, sql: str, fmt: str = "CSV", params: Mapping[str, Any] | None = None) -> Any:
        with self._lock:
            try:
                return self._session.query(sql, fmt, params={k: _param(v) for k, v in (params or {}).items()})
            except Exception as exc:  # chdb raises its own ChdbError / RuntimeError
                raise ClickHouseError(f"ClickHouse refused: {str(exc).strip()[:2000]}") from exc

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._run(sql, params=params)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        table = self._run(sql, "ArrowTable", params)
        columns = [column.to_pylist() for column in table.columns]
        return list(zip(*columns, strict=True)) if columns else []

    def insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, token: str
    ) -> None:
        import pyarrow as pa

        if not rows:
            return
        # chDB reads a Python object named in the query from the caller's frame: Arrow columns
        # go in without being formatted as text and parsed back.
        columns_of_rows = zip(*rows, strict=True)
        block = pa.table(  # noqa: F841  (read by name by the query below)
            {name: list(values) for name, values in zip(columns, columns_of_rows, strict=True)}
        )
        names = ", ".join(_quote(c) for c in columns)
        sql = (
            f"INSERT INTO {_quote(self.database)}.{_quote(table)} ({names}) "
            f"SETTINGS insert_deduplication_token = {{token:String}}, "
            f"deduplicate_blocks_in_dependent_materialized_views = 1 "
            f"SELECT {names} FROM Python(block)"
        )
        with self._lock:
            try:
                self._session.query(sql, "CSV", params={"token": _param(token)})
            except Exception as exc:
                raise ClickHouseError(
                    f"ClickHouse refused an insert into {table}: {str(exc).strip()[:2000]}"
                ) from exc

    def close(self) -> None:
        """Close the process's chDB session (every :class:`Chdb` on this path shares it)."""
        with _OPEN_LOCK, self._lock:
            if _OPEN.get("session", (None,))[0] == self.path:
                del _OPEN["session"]
                self._session.close()


class ClickHouseServer:
    """A ClickHouse server or cluster over HTTP (PyPI ``clickhouse-connect``)."""

    def __init__(
        self, *, host: str, port: int, username: str, password: str, database: str, secure: bool = False
    ) -> None:
        try:
            import clickhouse_connect
        except ImportError as exc:  # pragma: no cover
            raise ClickHouseError(
                "clickhouse:// needs the clickhouse extra: pip install 'perch[clickhouse]'"
            ) from exc
        self.database = database
        self._client = clickhouse_connect.get_client(
            host=host,
            port=port,
            username=username,
            password=password,
            database=database,
            secure=secure,
            # No session: the server refuses overlapping queries of one session, and serve's request
            # threads and its publisher query at once.
            autogenerate_session_id=False,
            # Thousands of ids per lookup: in the body, not a URL a proxy would refuse.
            form_encode_query_params=True,
        )

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._client.command(sql, parameters=dict(params or {}))

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._client.query(sql, parameters=dict(params or {})).result_rows]

    def insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, token: str
    ) -> None:
        if rows:
            self._client.insert(
                table,
                [list(r) for r in rows],
                column_names=list(columns),
                database=self.database,
                settings={
                    "insert_deduplication_token": token,
                    "deduplicate_blocks_in_dependent_materialized_views": 1,
                },
            )

    def close(self) -> None:
        self._client.close()
