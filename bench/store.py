"""A fresh PostgreSQL database per run, and fast seeding with COPY (not the API)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import Engine

from policies.config import CAP_MAXIMA
from policies.content import body_digest
from scheduler.client import Healthgate
from scheduler.settings import Settings

#: The benchmark's lines: +14155550100, +14155550101, ...
LINE_NUMBERS = tuple(f"+1415555{100 + i:04d}" for i in range(100))
#: Bodies with varied wording, so the content rule sees several digests.
BODIES = tuple(
    f"{word} update: your order {{n}} is on its way"
    for word in ("Shipping", "Delivery", "Order", "Account", "Billing", "Store", "Pickup")
)
#: A realistic spread of chat health, by chat number modulo 20.
HEALTH_BY_SLOT = ["HEALTHY"] * 14 + ["AT_RISK"] * 3 + ["CRITICAL"] * 2 + ["OPTED_OUT"]

# Caps in force in every scenario: the highest a policy may set, so that the benchmark
# measures healthgate (no run comes near them), and low enough per recipient that some
# messages are throttled by a cap.
CAPS = {
    **CAP_MAXIMA,
    "sends_per_recipient_per_minute": 5,
    "sends_per_recipient_per_day": 20,
}


def fresh_database(admin_url: str, name: str) -> str:
    """Drop and create ``name`` next to ``admin_url``'s database; returns its URL."""
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def write_policy(path: Path, lines: int, caps: dict[str, int] | None = None) -> Path:
    """A policy file with ``lines`` lines on the ``log`` provider and the given caps."""
    text = "".join(
        f'[[lines]]\nnumber = "{number}"\nprovider = "log"\n\n' for number in LINE_NUMBERS[:lines]
    )
    text += "[caps]\n" + "".join(f"{k} = {v}\n" for k, v in (caps or CAPS).items())
    most = CAP_MAXIMA["distinct_recipients_per_hour"]
    text += f"[content]\nsame_body_max_recipients_per_hour = {most}\n"
    path.write_text(text)
    return path


def migrate(settings: Settings) -> None:
    """Schema and lines, as an operator's ``healthgate db upgrade`` leaves them."""
    client = Healthgate(settings)
    client.migrate()
    client.close()


@dataclass(frozen=True)
class ChatRow:
    id: int
    line_id: int
    recipient: str


def naive(moment: datetime) -> datetime:
    """How the store keeps times: naive UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def seed_chats(engine: Engine, count: int, now: datetime, spread: bool = True) -> list[ChatRow]:
    """``count`` chats over every line; health spread over all four buckets when ``spread``.

    Every second chat has sent before (outside today's window), the others are new.
    The last line is CRITICAL and the one before AT_RISK when ``spread``.
    """
    with engine.begin() as conn:
        line_ids = [row[0] for row in conn.exec_driver_sql("SELECT id FROM lines ORDER BY id")]
        if spread and len(line_ids) >= 3:
            conn.exec_driver_sql(
                "UPDATE lines SET reputation = 'AT_RISK' WHERE id = %s", (line_ids[-2],)
            )
            conn.exec_driver_sql(
                "UPDATE lines SET reputation = 'CRITICAL' WHERE id = %s", (line_ids[-1],)
            )
    earlier = naive(now - timedelta(days=2))
    rows = []
    for i in range(count):
        health = HEALTH_BY_SLOT[i % 20] if spread else "HEALTHY"
        rows.append(
            (
                line_ids[i % len(line_ids)],
                f"+1415{2_000_000 + i:07d}",
                "HEALTHY" if health == "OPTED_OUT" else health,
                naive(now) if health == "OPTED_OUT" else None,
                earlier if i % 2 == 0 else None,
                naive(now),
            )
        )
    columns = "line_id, recipient, health, opted_out_at, first_sent_at, created_at"
    copy_rows(engine, f"COPY chats ({columns}) FROM STDIN", rows)
    with engine.connect() as conn:
        found = conn.exec_driver_sql("SELECT id, line_id, recipient FROM chats ORDER BY id")
        return [ChatRow(*row) for row in found]


MESSAGE_COLUMNS = (
    "id, line_id, chat_id, pinned, recipient, body, body_hash, state, not_before, "
    "held_since, attempts, last_code, last_reason, created_at, updated_at"
)


def message_rows(
    prefix: str,
    chats: Sequence[ChatRow],
    count: int,
    state: str,
    not_before: datetime,
    now: datetime,
    code: str = "enqueued",
) -> Iterator[tuple[Any, ...]]:
    """``count`` messages in ``state`` spread round-robin over ``chats``."""
    digests = [body_digest(body.format(n=1)) for body in BODIES]
    held = naive(now) if state == "deferred" else None
    stamp = naive(now)
    for i in range(count):
        chat = chats[i % len(chats)]
        template = i % len(BODIES)
        yield (
            f"msg_{prefix}{i:012d}",
            chat.line_id,
            chat.id,
            False,
            chat.recipient,
            BODIES[template].format(n=i),
            digests[template],
            state,
            naive(not_before),
            held,
            0,
            code,
            code,
            stamp,
            stamp,
        )


def seed_messages(engine: Engine, rows: Iterator[tuple[Any, ...]]) -> None:
    copy_rows(engine, f"COPY messages ({MESSAGE_COLUMNS}) FROM STDIN", rows)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def copy_rows(engine: Engine, statement: str, rows: Any) -> None:
    """Rows in through PostgreSQL's COPY: far faster than INSERTs for a big backlog."""
    raw = engine.raw_connection()
    try:
        connection: Any = raw.driver_connection
        with connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
        connection.commit()
    finally:
        raw.close()


def count_states(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT state, count(*) FROM messages GROUP BY state")
        return {state: n for state, n in rows}
