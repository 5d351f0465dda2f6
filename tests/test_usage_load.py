"""A batch's usage, read as counts far from a cap, decides as the usage read in full does."""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from policies.pace import Limits, check, headroom
from policies.usage import LineUsage, TimesNotLoaded, earliest_allowed
from scheduler.store.db import create_db_engine, session_factory
from scheduler.store.models import Chat, Line, Message
from scheduler.store.usage import load_usage
from tests.conftest import examples

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
RECIPIENTS = [f"+1415555{2000 + i:04d}" for i in range(8)]
DIGESTS = ["a" * 32, "b" * 32, "c" * 32]
#: Everything is near a cap with this much headroom: every window's times are read.
IN_FULL = 10**9

#: A past send: recipient index, seconds before NOW (within two days), digest index.
sends_strategy = st.lists(
    st.tuples(
        st.integers(0, len(RECIPIENTS) - 1),
        st.one_of(st.integers(1, 120), st.integers(1, 2 * 86_400)),
        st.integers(0, len(DIGESTS) - 1),
    ),
    max_size=40,
)
#: Caps from binding at once to far out of reach of a batch, so a window is read both
#: ways: as a count, and with its times.
limits_strategy = st.builds(
    Limits,
    sends_per_minute=st.integers(1, 60),
    sends_per_day=st.integers(1, 60),
    sends_per_recipient_per_minute=st.integers(1, 4),
    sends_per_recipient_per_day=st.integers(1, 12),
    distinct_recipients_per_hour=st.integers(1, 20),
    new_conversations_per_day=st.integers(1, 20),
)
#: The batch: recipient index, starts a conversation, digest index.
batch_strategy = st.lists(
    st.tuples(st.integers(0, len(RECIPIENTS) - 1), st.booleans(), st.integers(0, 2)),
    min_size=1,
    max_size=6,
)


def _store(session: Session, sends: list[tuple[int, int, int]]) -> Line:
    line = Line(number="+14155550100", provider="log", created_at=NOW)
    session.add(line)
    session.flush()
    chats = {}
    for n, recipient in enumerate(RECIPIENTS):
        first = [NOW - timedelta(seconds=s) for r, s, _ in sends if r == n]
        chats[n] = Chat(
            line_id=line.id,
            recipient=recipient,
            first_sent_at=min(first, default=None),
            created_at=NOW - timedelta(days=3),
        )
        session.add(chats[n])
    session.flush()
    for i, (n, seconds, digest) in enumerate(sends):
        at = NOW - timedelta(seconds=seconds)
        session.add(
            Message(
                id=f"msg_{i}",
                line_id=line.id,
                chat_id=chats[n].id,
                recipient=RECIPIENTS[n],
                body="hi",
                body_hash=DIGESTS[digest],
                state="sent",
                dispatched_at=at,
                created_at=at,
                updated_at=at,
            )
        )
    session.flush()
    return line


@settings(max_examples=examples(60), deadline=None)
@given(
    sends=sends_strategy, limits=limits_strategy, batch=batch_strategy, body_limit=st.integers(1, 5)
)
def test_a_batch_read_as_counts_decides_as_one_read_in_full(
    sqlite_template: Path,
    sends: list[tuple[int, int, int]],
    limits: Limits,
    batch: list[tuple[int, bool, int]],
    body_limit: int,
) -> None:
    # Given a line's sends of the last two days in the store
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "usage.db"
        shutil.copy(sqlite_template, path)
        engine = create_db_engine(f"sqlite:///{path}")
        try:
            with session_factory(engine).begin() as session:
                line = _store(session, sends)
                recipients = {RECIPIENTS[r] for r, _, _ in batch}
                digests = {DIGESTS[d] for _, _, d in batch}

                # When its usage is read for the batch, and read in full
                def read(headroom: int) -> LineUsage:
                    return load_usage(
                        session,
                        [line],
                        {line.id: limits},
                        NOW,
                        headroom,
                        recipients,
                        digests,
                        body_limit,
                    )[line.id]

                partial, full = read(len(batch)), read(IN_FULL)

                # Then every send of the batch gets the same verdicts from both, and the
                # lines rank the same, as the batch records its own sends
                for r, new_chat, d in batch:
                    assert _counts(partial) == _counts(full)
                    assert headroom(partial, limits, NOW) == headroom(full, limits, NOW)
                    recipient, digest = RECIPIENTS[r], DIGESTS[d]
                    assert check(partial, limits, recipient, new_chat, NOW) == check(
                        full, limits, recipient, new_chat, NOW
                    )
                    assert partial.body_allowed(digest, recipient, body_limit, NOW) == (
                        full.body_allowed(digest, recipient, body_limit, NOW)
                    )
                    for usage in (partial, full):
                        usage.record(recipient, NOW, new_chat=new_chat, body_hash=digest)
        finally:
            engine.dispose()


def _counts(usage: LineUsage) -> tuple[int, int, int, int]:
    return (
        usage.sent_last_minute(NOW),
        usage.day_count,
        usage.recipients_last_hour(NOW),
        usage.new_chats_last_day(NOW),
    )


def test_a_window_at_its_cap_without_its_times_is_an_error() -> None:
    # Given a window holding 3 events, only counted, When a cap of 3 is checked
    # Then it says the times were needed and not loaded, rather than guess
    with pytest.raises(TimesNotLoaded, match="3 events in the window reach the cap of 3"):
        earliest_allowed([], 3, timedelta(minutes=1), NOW, unloaded=3)


def test_a_window_below_its_cap_needs_no_times() -> None:
    # Given 2 counted events and one loaded, When a cap of 4 is checked, Then it has room
    times = [NOW - timedelta(seconds=5)]
    assert earliest_allowed(times, 4, timedelta(minutes=1), NOW, unloaded=2) == NOW
