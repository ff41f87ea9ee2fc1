"""Bulk statements for the ingest path, written for each dialect's fastest form.

A consumer stores groups of thousands of events; what SQLAlchemy's generic executemany costs per
row (binding parameters one by one; on PostgreSQL, psycopg parsing a statement of thousands of
placeholders on every call, since such statements are too long for its cache) was most of a
group's time. Here:

* SQLite: multi-row ``VALUES`` statements (a few hundred rows each) and ``executemany``, both
  in the driver's C code;
* PostgreSQL: one statement per group over ``unnest`` of one array per column, so the statement
  text and its parameter count stay the same whatever the group's size.

Statements are built from the table's own columns and names, never from input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Float, Table, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY

__all__ = ["insert_new", "insert_rows", "member", "parts", "update_rows"]

_ROWS_PER_INSERT = 500  # x at most 12 columns: within SQLite's bound-parameter limit
_IN_CHUNK = 500  # values per IN (...) on SQLite


def parts(conn: Connection, values: Sequence[Any]) -> list[Sequence[Any]]:
    """``values`` split for :func:`member`: whole on PostgreSQL (one array), in chunks on SQLite."""
    if not values:
        return []
    if conn.dialect.name == "postgresql":
        return [values]
    return [values[i : i + _IN_CHUNK] for i in range(0, len(values), _IN_CHUNK)]


def member(conn: Connection, column: Column[Any], values: Sequence[Any]) -> ColumnElement[bool]:
    """``column`` is one of ``values``: ``= ANY(array)`` on PostgreSQL (one parameter, not thousands
    for psycopg to parse and the planner to scan linearly), ``IN (...)`` on SQLite."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(list(values))


def _pg_array(column: Column[Any], conn: Connection) -> str:
    return f"%s::{column.type.compile(dialect=conn.dialect)}[]"


def _column(table: Table, name: str, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """One column's values as one array parameter. psycopg refuses a list mixing ints and floats,
    so a float column's values are all floats."""
    if isinstance(table.c[name].type, Float):
        return [None if row[name] is None else float(row[name]) for row in rows]
    return [row[name] for row in rows]


def insert_new(conn: Connection, table: Table, key: str, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Insert ``rows``, skipping those whose ``key`` is stored; the keys this call inserted.

    ``ON CONFLICT DO NOTHING RETURNING key``: exactly the rows this transaction inserted, so a
    redelivered event is never counted twice, even when two consumers race on it.
    """
    if not rows:
        return set()
    columns = list(rows[0])
    tail = f" ON CONFLICT DO NOTHING RETURNING {key}"
    if conn.dialect.name == "postgresql":
        arrays = ", ".join(_pg_array(table.c[c], conn) for c in columns)
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({arrays})" + tail
        params = tuple(_column(table, c, rows) for c in columns)
        return {r[0] for r in conn.exec_driver_sql(sql, params)}
    one = "(" + ", ".join(["?"] * len(columns)) + ")"
    head = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
    new: set[str] = set()
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        part = rows[start : start + _ROWS_PER_INSERT]
        sql = head + ", ".join([one] * len(part)) + tail
        new.update(r[0] for r in conn.exec_driver_sql(sql, tuple(row[c] for row in part for c in columns)))
    return new


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append ``rows`` (no conflicts possible: the table's key is generated)."""
    if not rows:
        return
    columns = list(rows[0])
    if conn.dialect.name == "postgresql":
        arrays = ", ".join(_pg_array(table.c[c], conn) for c in columns)
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"
        conn.exec_driver_sql(sql, tuple(_column(table, c, rows) for c in columns))
        return
    marks = ", ".join(["?"] * len(columns))
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})"
    conn.exec_driver_sql(sql, [tuple(row[c] for c in columns) for row in rows])


def update_rows(
    conn: Connection,
    table: Table,
    key: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    add: Sequence[str] = (),
) -> None:
    """Set each row's columns by ``key`` (at most one row per key); columns in ``add`` are added to."""
    if not rows:
        return
    columns = [c for c in rows[0] if c != key]

    def value(c: str, source: str) -> str:
        return f"{table.name}.{c} + {source}.{c}" if c in add else f"{source}.{c}"

    if conn.dialect.name == "postgresql":
        arrays = ", ".join(_pg_array(table.c[c], conn) for c in [key, *columns])
        sets = ", ".join(f"{c} = {value(c, 'v')}" for c in columns)
        sql = (
            f"UPDATE {table.name} SET {sets} FROM unnest({arrays}) AS v({key}, {', '.join(columns)}) "
            f"WHERE {table.name}.{key} = v.{key}"
        )
        conn.exec_driver_sql(sql, tuple(_column(table, c, rows) for c in [key, *columns]))
        return
    # SQLite: the driver's executemany, one compiled statement for every row.
    sets = ", ".join(f"{c} = {table.name}.{c} + ?" if c in add else f"{c} = ?" for c in columns)
    sql = f"UPDATE {table.name} SET {sets} WHERE {key} = ?"
    conn.exec_driver_sql(sql, [tuple(row[c] for c in [*columns, key]) for row in rows])
