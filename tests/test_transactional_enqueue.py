"""Enqueue in the application's own transaction: the message exists iff the caller commits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.orm import Session

from policies.errors import IdempotencyConflict, InvalidInput
from scheduler.client import Healthgate
from scheduler.constants import ENQUEUE_PART
from scheduler.store.models import Chat, DecisionRecord, Message
from tests.conftest import TABLES, examples
from tests.services import POSTGRES_URL

TO = "+14155550123"
OTHER = "+14155550124"

#: The application's own table, in healthgate's database.
app_tables = MetaData()
orders = Table(
    "orders",
    app_tables,
    Column("id", Integer, primary_key=True),
    Column("item", String(50), nullable=False),
)


@pytest.fixture
def database_url(postgres_database: str) -> str:
    """PostgreSQL only: the outbox needs the application's database to be healthgate's."""
    engine = sqlalchemy.create_engine(postgres_database)
    app_tables.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {TABLES}, orders RESTART IDENTITY CASCADE")
    engine.dispose()
    return postgres_database


@pytest.fixture
def app(database_url: str) -> Iterator[Engine]:
    """The application's own engine on the same database (not healthgate's)."""
    engine = sqlalchemy.create_engine(database_url)
    yield engine
    engine.dispose()


def counts(hg: Healthgate) -> dict[str, int]:
    with hg.runtime.sessions() as session:
        return {
            name: session.scalar(select(func.count()).select_from(table)) or 0
            for name, table in (
                ("orders", orders),
                ("messages", Message.__table__),
                ("chats", Chat.__table__),
                ("decisions", DecisionRecord.__table__),
            )
        }


NOTHING = {"orders": 0, "messages": 0, "chats": 0, "decisions": 0}


def test_commit_stores_the_order_and_the_message_which_drain_sends(
    hg: Healthgate, app: Engine, sends: Callable[[], list[dict[str, str]]]
) -> None:
    with Session(app) as session, session.begin():
        session.execute(insert(orders).values(id=1, item="book"))
        message_id = hg.enqueue(TO, "Order 1 confirmed", session=session)

    assert counts(hg)["orders"] == 1
    assert hg.explain(message_id)["id"] == message_id
    hg.drain()
    assert [s["message_id"] for s in sends()] == [message_id]


def test_commit_on_a_connection(hg: Healthgate, app: Engine) -> None:
    with app.begin() as connection:
        connection.execute(insert(orders).values(id=1, item="book"))
        ids = hg.enqueue_many([{"to": TO, "body": "one"}], connection=connection)

    assert counts(hg)["orders"] == 1
    assert [m["id"] for m in hg.messages()] == ids


def test_explicit_rollback_leaves_nothing(hg: Healthgate, app: Engine) -> None:
    with Session(app) as session:
        session.begin()
        session.execute(insert(orders).values(id=1, item="book"))
        hg.enqueue(TO, "Order 1 confirmed", session=session)
        session.rollback()

    assert counts(hg) == NOTHING


def test_an_exception_in_the_block_leaves_nothing(hg: Healthgate, app: Engine) -> None:
    def place_order() -> None:
        with Session(app) as session, session.begin():
            session.execute(insert(orders).values(id=1, item="book"))
            hg.enqueue(TO, "Order 1 confirmed", session=session)
            raise RuntimeError("payment declined")

    with pytest.raises(RuntimeError):
        place_order()

    assert counts(hg) == NOTHING


def test_a_rolled_back_connection_leaves_nothing(hg: Healthgate, app: Engine) -> None:
    with app.connect() as connection:
        connection.execute(insert(orders).values(id=1, item="book"))
        hg.enqueue(TO, "Order 1 confirmed", connection=connection)
        connection.rollback()

    assert counts(hg) == NOTHING


def test_a_repeated_key_in_the_transaction_returns_the_first_id(
    hg: Healthgate, app: Engine
) -> None:
    earlier = hg.enqueue(OTHER, "earlier", idempotency_key="earlier")
    with Session(app) as session, session.begin():
        first = hg.enqueue(TO, "Order 1 confirmed", idempotency_key="order-1", session=session)
        again = hg.enqueue(TO, "Order 1 confirmed", idempotency_key="order-1", session=session)
        stored = hg.enqueue(OTHER, "earlier", idempotency_key="earlier", session=session)

    assert again == first
    assert stored == earlier
    assert counts(hg)["messages"] == 2


def test_a_conflict_leaves_the_callers_transaction_free_to_commit(
    hg: Healthgate, app: Engine
) -> None:
    hg.enqueue(TO, "Order 1 confirmed", idempotency_key="order-1")
    with Session(app) as session, session.begin():
        session.execute(insert(orders).values(id=1, item="book"))
        with pytest.raises(IdempotencyConflict):
            hg.enqueue(TO, "other text", idempotency_key="order-1", session=session)
        session.execute(insert(orders).values(id=2, item="pen"))

    assert counts(hg)["orders"] == 2
    assert counts(hg)["messages"] == 1


def test_a_refusal_after_rows_were_written_rolls_back_to_the_savepoint(
    hg: Healthgate, app: Engine
) -> None:
    # Given a chat id that names a chat with TO
    hg.enqueue(TO, "hello", chat_id="chat-1")
    before = counts(hg)
    # When a call writes a whole part, then finds a later message's chat id taken
    many = [{"to": f"+1415555{i:04d}", "body": "hi"} for i in range(1000, 1000 + ENQUEUE_PART)]
    bad = {"to": OTHER, "body": "hi", "chat_id": "chat-1"}
    with Session(app) as session, session.begin():
        session.execute(insert(orders).values(id=1, item="book"))
        with pytest.raises(InvalidInput, match="chat_id"):
            hg.enqueue_many([*many, bad], session=session)
        # Then the caller's transaction goes on and commits its own row only
        session.execute(insert(orders).values(id=2, item="pen"))
        kept = hg.enqueue(OTHER, "after", session=session)

    after = counts(hg)
    assert after["orders"] == 2
    assert after["messages"] == before["messages"] + 1
    assert after["chats"] == before["chats"] + 1
    assert hg.explain(kept)["id"] == kept


def test_a_session_on_another_database_is_refused(hg: Healthgate, database_url: str) -> None:
    other = sqlalchemy.create_engine(POSTGRES_URL)
    try:
        with Session(other) as session, pytest.raises(InvalidInput, match=r"^session=") as error:
            hg.enqueue(TO, "hi", session=session)
    finally:
        other.dispose()
    assert "not healthgate's database" in str(error.value)
    assert counts(hg)["messages"] == 0


def test_a_sqlite_connection_is_refused(hg: Healthgate, tmp_path: Path) -> None:
    other = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    try:
        with other.connect() as connection, pytest.raises(InvalidInput, match=r"^connection="):
            hg.enqueue(TO, "hi", connection=connection)
    finally:
        other.dispose()
    assert counts(hg)["messages"] == 0


def test_session_and_connection_together_are_refused(hg: Healthgate, app: Engine) -> None:
    with (
        Session(app) as session,
        app.connect() as connection,
        pytest.raises(InvalidInput, match="not both"),
    ):
        hg.enqueue(TO, "hi", session=session, connection=connection)


#: One application transaction: how it ends, and which order's confirmation it sends.
STEP = st.tuples(st.sampled_from(["commit", "rollback", "raise"]), st.integers(0, 3))


@hypothesis_settings(
    max_examples=examples(15),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(STEP, min_size=1, max_size=6))
def test_messages_exist_iff_their_order_committed(
    hg: Healthgate, app: Engine, steps: list[tuple[str, int]]
) -> None:
    with app.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {TABLES}, orders RESTART IDENTITY CASCADE")
    hg.sync_lines()
    committed_orders: set[int] = set()
    first_ids: dict[int, str] = {}
    for number, (ending, order) in enumerate(steps):
        session = Session(app)
        try:
            session.begin()
            session.execute(insert(orders).values(id=number, item=f"item {order}"))
            message_id = hg.enqueue(
                TO, f"Order {order} confirmed", idempotency_key=f"order-{order}", session=session
            )
            if ending == "raise":
                raise RuntimeError("the application failed")
            if ending == "commit":
                session.commit()
                committed_orders.add(number)
                assert first_ids.setdefault(order, message_id) == message_id
            else:
                session.rollback()
        except RuntimeError:
            session.rollback()
        finally:
            session.close()

    with hg.runtime.sessions() as session:
        stored_orders = set(session.scalars(select(orders.c.id)))
        keys = {
            key: message_id
            for key, message_id in session.execute(select(Message.idempotency_key, Message.id))
        }
    assert stored_orders == committed_orders
    assert keys == {f"order-{order}": message_id for order, message_id in first_ids.items()}
