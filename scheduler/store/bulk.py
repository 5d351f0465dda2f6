"""Many rows or values in one statement: PostgreSQL reads them from arrays, others
use executemany and ``IN`` lists.

A multi-row ``VALUES`` statement, or an ``IN`` list, of a thousand values is a long text
the driver has to rewrite on every call; ``INSERT ... SELECT FROM unnest(arrays)`` and
a look-up from ``unnest(arrays)`` are short statements whatever the number of values,
with one parameter a column. The arrays go in the binary format: the text one is built
in Python, value by value, and costs several times more.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    Integer,
    Row,
    String,
    Table,
    any_,
    bindparam,
    cast,
    func,
    insert,
    null,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
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


def one_of(
    dialect: Dialect, column: ColumnElement[str] | InstrumentedAttribute[str], values: Sequence[str]
) -> ColumnElement[bool]:
    """``column IN values`` for text keys (message ids): on PostgreSQL one parameter,
    ``= ANY`` of the values joined in one string. An ``IN`` list of a batch's 400 ids is
    a statement of 400 placeholders that the driver parses again on every call (it
    caches short statements only) and the server plans again: about 3 ms a statement
    here, the larger part of locking a batch's rows by their keys."""
    joined = _SEPARATOR.join(values)
    if dialect.name != "postgresql" or joined.count(_SEPARATOR) != len(values) - 1:
        return column.in_(values)
    return column == any_(cast(func.string_to_array(joined, _SEPARATOR), ARRAY(String)))


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
    values, params, source = _bound(connection.dialect, table, columns, {}, keep=(key,))
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
    keep: Collection[str] = (),
) -> _Bound:
    """Bind ``columns`` (every row's value) and ``same`` (one value for all rows).

    A column whose rows all hold one value is bound once, not as an array: in a batch
    most columns are (the time, the state, the code), and dumping an array costs
    Python time for each of its values. The ``keep`` columns (else the first) stay
    arrays whatever they hold, so the rows are still counted out by ``unnest``.
    """
    keep = keep or (next(iter(columns)),)
    shared = dict(same)
    varying: dict[str, Sequence[Any]] = {}
    for name, values in columns.items():
        if name not in keep and values.count(values[0]) == len(values):
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
        value, cast = _array(
            list(values) if process is None else [process(value) for value in values],
            column.type.compile(dialect=dialect),
            isinstance(column.type, Integer),
        )
        params.append(value)
        casts.append(cast)
    source = f"unnest({', '.join(casts)}) AS v({', '.join(preparer.quote(n) for n in varying)})"
    return _Bound(list(expressions.values()), params, source)


#: Joins a column's values into one text that PostgreSQL splits again (see ``_array``):
#: the ASCII unit separator, which text rarely holds.
_SEPARATOR = "\x1f"


def _array(values: list[Any], sql_type: str, whole_numbers: bool) -> tuple[Any, str]:
    """A column's values as one parameter, and its placeholder typed ``sql_type[]``.

    Text, and whole numbers, go as one string that ``string_to_array`` splits: Python
    joins it in C, where psycopg dumps an array in Python, a value at a time, for about
    ten times as long. Values that do not survive the round trip go as an array: None,
    an empty string, text that holds the separator, and any other type.
    """
    try:
        joined = _SEPARATOR.join(map(str, values) if whole_numbers else values)
    except TypeError:
        joined = None
    if (
        joined is not None
        and "" not in values
        and None not in values
        and joined.count(_SEPARATOR) == len(values) - 1
    ):
        return joined, f"CAST(string_to_array(%b, E'\\x1f') AS {sql_type}[])"
    return values, f"CAST(%b AS {sql_type}[])"


def rows_by_key(
    connection: Connection,
    table: Table,
    key: Sequence[str],
    values: Collection[tuple[Any, ...]],
    columns: Sequence[str],
    number_missing: bool = False,
) -> Callable[[], list[Any]]:
    """Ask for the ``columns`` of ``table``'s rows whose unique ``key`` columns hold one
    of ``values``; the function returned reads the answer, rows in no particular order
    that have the columns as attributes.

    On PostgreSQL the question is sent at once and read when asked for: inside
    ``pipelined`` the server answers while the caller goes on with other work. Each
    value is one index probe, whatever the table's size or its statistics say: the
    values come in as arrays and each is looked up by a LATERAL subquery that ``LIMIT
    1`` keeps from being turned into a join. As a join, or as ``= ANY(array)``, a
    planner that believes the table small (one grown since it was last analysed) reads
    it whole: at 20,000 messages that cost 3.6 ms a call, and more as the table grew.
    Elsewhere, ``IN``.

    Every row also has ``new_id``, None for a stored row. With ``number_missing`` on
    PostgreSQL, a value no row holds gets a row too: its key, None for the other
    columns, and in ``new_id`` a value of the table's id sequence for the row about to
    be inserted, which other rows can refer to before it is.
    """
    if not values:
        return list
    driver = connection.connection.driver_connection
    if connection.dialect.driver != "psycopg" or driver is None:
        keys = [table.c[name] for name in key]
        matches = (
            keys[0].in_([value[0] for value in values])
            if len(keys) == 1
            else tuple_(*keys).in_(list(values))
        )
        query = select(*(table.c[c] for c in columns), null().label("new_id")).where(matches)
        rows = list(connection.execute(query))
        return lambda: rows
    preparer = connection.dialect.identifier_preparer
    _, params, source = _bound(connection.dialect, table, columns_of(key, list(values)), {}, key)
    name = {column: preparer.quote(column) for column in columns}
    found = ", ".join(f"t.{name[c]}" for c in columns)
    probe = (
        f"(SELECT true AS found, {found} FROM {preparer.format_table(table)} AS t "
        f"WHERE {' AND '.join(f't.{preparer.quote(k)} = v.{preparer.quote(k)}' for k in key)} "
        "LIMIT 1) AS f"
    )
    selected = ", ".join(f"v.{name[c]}" if c in key else f"f.{name[c]}" for c in columns)
    if number_missing:
        sql = (
            f"SELECT {selected}, CASE WHEN f.found IS NULL THEN nextval(q.ids) END AS new_id "
            f"FROM {source} CROSS JOIN (SELECT CAST(pg_get_serial_sequence(%b, 'id') "
            f"AS regclass) AS ids) AS q LEFT JOIN LATERAL {probe} ON true"
        )
        params.append(preparer.format_table(table))
    else:
        sql = f"SELECT {selected}, NULL AS new_id FROM {source} CROSS JOIN LATERAL {probe}"
    # The driver's own cursor: SQLAlchemy reads a result's columns as it runs, which a
    # statement in a pipeline does not have yet.
    cursor = driver.cursor(row_factory=namedtuple_row)
    cursor.execute(sql, tuple(params))
    return cursor.fetchall  # type: ignore[no-any-return]


@contextmanager
def pipelined(connection: Connection) -> Iterator[None]:
    """Send the statements run inside without waiting for them; wait for all at the end.

    With psycopg (its pipeline mode) PostgreSQL works through them while the caller
    goes on with its own work; elsewhere the block runs as written. A statement's error
    surfaces when the block ends, as the SQLAlchemy error it would have raised.
    """
    driver = connection.connection.driver_connection
    if connection.dialect.driver != "psycopg" or driver is None:
        yield
        return
    try:
        with driver.pipeline():
            yield
    except psycopg.Error as exc:
        raise DBAPIError.instance(None, None, exc, psycopg.Error) from exc
