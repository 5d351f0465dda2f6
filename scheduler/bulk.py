"""Many rows in one statement: PostgreSQL reads them from arrays, others use executemany.

A multi-row ``VALUES`` statement of a thousand rows is a long text the driver has to
rewrite on every call; ``INSERT ... SELECT FROM unnest(arrays)`` is one short statement
whatever the number of rows, with one parameter a column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Dialect, Row, Table, bindparam, insert, update


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
        casts.append(f"CAST(%s AS {column.type.compile(dialect=dialect)}[])")
    return arrays, casts
