"""Many rows or values in one statement: PostgreSQL reads them from arrays, others
use executemany and ``IN`` lists.

A multi-row ``VALUES`` statement, or an ``IN`` list, of a thousand values is a long text
the driver has to rewrite on every call; ``INSERT ... SELECT FROM unnest(arrays)`` and
``= ANY(array)`` are short statements whatever the number of values, with one parameter
a column. The arrays go in the binary format: the text one is built in Python, value
by value, and costs several times more.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, Table, any_, bindparam, insert, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import InstrumentedAttribute


def insert_rows(
    connection: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    returning: Sequence[str] = (),
) -> list[Row[Any]]:
    """Insert ``rows`` (each with the same keys) into ``table``; the ``returning`` columns
    of the new rows, in no particular order."""
    if not rows:
        return []
    if connection.dialect.name != "postgresql":
        statement = insert(table)
        if returning:
            statement = statement.returning(*(table.c[name] for name in returning))
            return list(connection.execute(statement, list(rows)).all())
        connection.execute(statement, list(rows))
        return []
    preparer = connection.dialect.identifier_preparer
    names = list(rows[0])
    arrays, casts = _arrays(connection.dialect, table, names, rows)
    sql = (
        f"INSERT INTO {preparer.format_table(table)} "
        f"({', '.join(preparer.quote(name) for name in names)}) "
        f"SELECT * FROM unnest({', '.join(casts)})"
    )
    if returning:
        sql += f" RETURNING {', '.join(preparer.quote(name) for name in returning)}"
        return list(connection.exec_driver_sql(sql, tuple(arrays)).all())
    connection.exec_driver_sql(sql, tuple(arrays))
    return []


def update_rows(
    connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]], key: str = "id"
) -> None:
    """Update ``table``'s rows by ``key``: each of ``rows`` (all with the same keys) gives
    one row's key and its new values."""
    if not rows:
        return
    names = [name for name in rows[0] if name != key]
    if connection.dialect.name != "postgresql":
        statement = (
            update(table)
            .where(table.c[key] == bindparam(f"_{key}"))
            .values({name: bindparam(name) for name in names})
        )
        connection.execute(statement, [{**row, f"_{key}": row[key]} for row in rows])
        return
    preparer = connection.dialect.identifier_preparer
    arrays, casts = _arrays(connection.dialect, table, [key, *names], rows)
    quoted = [preparer.quote(name) for name in (key, *names)]
    sql = (
        f"UPDATE {preparer.format_table(table)} AS t SET "
        + ", ".join(f"{name} = v.{name}" for name in quoted[1:])
        + f" FROM unnest({', '.join(casts)}) AS v({', '.join(quoted)})"
        f" WHERE t.{quoted[0]} = v.{quoted[0]}"
    )
    connection.exec_driver_sql(sql, tuple(arrays))


def _arrays(
    dialect: Dialect, table: Table, names: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> tuple[list[list[Any]], list[str]]:
    """One array of bound values a column, and each array's typed placeholder."""
    arrays: list[list[Any]] = []
    casts: list[str] = []
    for name in names:
        column = table.c[name]
        process = column.type.bind_processor(dialect)
        values = [row[name] for row in rows]
        if process is not None:
            values = [process(value) for value in values]
        arrays.append(values)
        casts.append(f"CAST(%b AS {column.type.compile(dialect=dialect)}[])")
    return arrays, casts


def among(
    column: InstrumentedAttribute[Any], values: Collection[Any], dialect: Dialect
) -> ColumnElement[bool]:
    """``column`` is one of ``values``: one array parameter on PostgreSQL, ``IN`` elsewhere.

    A single value is a plain ``=``: the statement a one-message call has always sent.
    """
    if len(values) == 1:
        matches: ColumnElement[bool] = column == next(iter(values))
    elif dialect.name != "postgresql":
        matches = column.in_(values)
    else:
        matches = column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return matches


@contextmanager
def planned_for_values(connection: Connection) -> Iterator[None]:
    """Have PostgreSQL plan the look-ups inside for their own arrays.

    The driver prepares a statement run five times, and PostgreSQL may then keep one
    generic plan for any parameters: one made while a table was nearly empty scans it
    whole even after it grew, and an ``= ANY(array)`` look-up of a thousand values is
    where that hurts. The inserts that follow are left to the generic plans, which
    cost them half as much. On an error the transaction is rolled back, setting and all.
    """
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
    yield
    if postgres:
        connection.exec_driver_sql("SET LOCAL plan_cache_mode TO DEFAULT")
