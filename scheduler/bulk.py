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
from typing import Any, NamedTuple

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
    return insert_columns(
        connection, table, {name: [row[name] for row in rows] for name in rows[0]}, {}, returning
    )


def insert_columns(
    connection: Connection,
    table: Table,
    columns: Mapping[str, Sequence[Any]],
    same: Mapping[str, Any],
    returning: Sequence[str] = (),
) -> list[Row[Any]]:
    """Insert rows given a column at a time: ``columns`` holds every row's value of a
    column (all of one length), ``same`` the value that every row has; the ``returning``
    columns of the new rows, in no particular order."""
    count = len(next(iter(columns.values())))
    if not count:
        return []
    if connection.dialect.name != "postgresql":
        statement = insert(table)
        rows = [
            {**dict(zip(columns, values, strict=True)), **same}
            for values in zip(*columns.values(), strict=True)
        ]
        if returning:
            statement = statement.returning(*(table.c[name] for name in returning))
            return list(connection.execute(statement, rows).all())
        connection.execute(statement, rows)
        return []
    preparer = connection.dialect.identifier_preparer
    names = [*columns, *same]
    values, params, source = _bound(connection.dialect, table, columns, same)
    sql = (
        f"INSERT INTO {preparer.format_table(table)} "
        f"({', '.join(preparer.quote(name) for name in names)}) "
        f"SELECT {', '.join(values)} FROM {source}"
    )
    if returning:
        sql += f" RETURNING {', '.join(preparer.quote(name) for name in returning)}"
        return list(connection.exec_driver_sql(sql, tuple(params)).all())
    connection.exec_driver_sql(sql, tuple(params))
    return []


def columns_of(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Sequence[Any]]:
    """Rows of values in the order of ``names``, turned into ``insert_columns``' columns."""
    return dict(zip(names, zip(*rows, strict=True), strict=True))


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
    columns = {name: [row[name] for row in rows] for name in (key, *names)}
    values, params, source = _bound(connection.dialect, table, columns, {}, keep=key)
    sql = (
        f"UPDATE {preparer.format_table(table)} AS t SET "
        + ", ".join(
            f"{preparer.quote(name)} = {value}"
            for name, value in zip(names, values[1:], strict=True)
        )
        + f" FROM {source} WHERE t.{preparer.quote(key)} = v.{preparer.quote(key)}"
    )
    connection.exec_driver_sql(sql, tuple(params))


class _Bound(NamedTuple):
    """Columns as PostgreSQL reads them: from arrays, or one value for every row."""

    #: Each column's expression, in the order given: ``v.name`` or a typed placeholder.
    values: list[str]
    #: The values' placeholders' parameters, then the arrays', in the statement's order.
    params: list[Any]
    #: ``unnest(...) AS v(...)``: the arrays, one row of ``v`` a row.
    source: str


def _bound(
    dialect: Dialect,
    table: Table,
    columns: Mapping[str, Sequence[Any]],
    same: Mapping[str, Any],
    keep: str | None = None,
) -> _Bound:
    """Bind ``columns`` (every row's value) and ``same`` (one value for all rows).

    A column whose rows all hold one value is bound once, not as an array: in a batch
    most columns are (the time, the state, the code), and dumping an array costs
    Python time for each of its values. ``keep`` (else the first column) stays an
    array whatever it holds, so the rows are still counted out by ``unnest``.
    """
    keep = keep or next(iter(columns))
    shared = dict(same)
    varying: dict[str, Sequence[Any]] = {}
    for name, values in columns.items():
        if name != keep and values.count(values[0]) == len(values):
            shared[name] = values[0]
        else:
            varying[name] = values
    params: list[Any] = []
    expressions: dict[str, str] = {}
    preparer = dialect.identifier_preparer
    for name in [*columns, *same]:
        if name in varying:
            expressions[name] = f"v.{preparer.quote(name)}"
            continue
        column = table.c[name]
        process = column.type.bind_processor(dialect)
        params.append(shared[name] if process is None else process(shared[name]))
        expressions[name] = f"CAST(%b AS {column.type.compile(dialect=dialect)})"
    casts: list[str] = []
    for name, values in varying.items():
        column = table.c[name]
        process = column.type.bind_processor(dialect)
        params.append(list(values) if process is None else [process(value) for value in values])
        casts.append(f"CAST(%b AS {column.type.compile(dialect=dialect)}[])")
    source = f"unnest({', '.join(casts)}) AS v({', '.join(preparer.quote(n) for n in varying)})"
    return _Bound(list(expressions.values()), params, source)


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
