"""The Redis limiter's view of a batch's windows decides as the full record of its sends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.pace import Limits, check, headroom
from policies.usage import LineUsage
from scheduler.limits import RedisLimiter, Ticket
from tests.conftest import examples
from tests.services import require_redis
from tests.test_usage_load import limits_strategy

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LINE = "+14155550100"
RECIPIENTS = [f"+1415555{2000 + i:04d}" for i in range(8)]
#: Wide enough that every past send is taken.
TAKES_ALL = Limits(10**6, 10**6, 10**6, 10**6, 10**6, 10**6)

#: A past send: recipient index, seconds before NOW (within a day), starts a conversation.
past_sends = st.lists(
    st.tuples(
        st.integers(0, len(RECIPIENTS) - 1),
        st.one_of(st.integers(1, 120), st.integers(1, 86_399)),
        st.booleans(),
    ),
    max_size=40,
)
#: The batch: recipient index, starts a conversation.
batches = st.lists(st.tuples(st.integers(0, len(RECIPIENTS) - 1), st.booleans()), max_size=6)


@pytest.fixture(scope="module")
def limiter() -> Iterator[RedisLimiter]:
    client = redis.Redis.from_url(require_redis())
    limiter = RedisLimiter(client, prefix=f"test:{uuid.uuid4().hex[:8]}:")
    yield limiter
    stale = client.keys(limiter.prefix + "*")
    if stale:
        client.delete(*stale)
    limiter.close()


@settings(max_examples=examples(60), deadline=None)
@given(sends=past_sends, limits=limits_strategy, batch=batches)
def test_a_batch_view_from_redis_decides_as_the_full_record(
    limiter: RedisLimiter,
    sends: list[tuple[int, int, bool]],
    limits: Limits,
    batch: list[tuple[int, bool]],
) -> None:
    # Given a line's sends of the last day, taken by the limiter in time order, and the
    # same sends recorded in full
    limiter.prefix = f"test:{uuid.uuid4().hex[:8]}:"
    full = LineUsage(day=[])
    started: set[int] = set()
    for i, (n, seconds, new) in enumerate(sorted(sends, key=lambda s: -s[1])):
        at = NOW - timedelta(seconds=seconds)
        new_chat = new and n not in started
        started |= {n} if new_chat else set()
        limiter.hit_many(None, [(Ticket(f"m{i}", 1, LINE, RECIPIENTS[n], new_chat), TAKES_ALL)], at)  # type: ignore[arg-type]
        full.record(RECIPIENTS[n], at, new_chat=new_chat)
    # (The full record keeps only each recipient's last send before the last minute.)
    for times in full.by_recipient.values():
        recent = [at for at in times if at > NOW - timedelta(minutes=1)]
        times[:] = recent or times[-1:]

    # When the limiter gives its view for the batch
    whom = {RECIPIENTS[n] for n, _ in batch}
    view = limiter.windows({1: LINE}, {1: limits}, NOW, len(batch), {1: whom})[1]

    # Then each send of the batch gets the same verdict and the line the same headroom
    for n, new_chat in batch:
        recipient = RECIPIENTS[n]
        assert check(view, limits, recipient, new_chat, NOW) == check(
            full, limits, recipient, new_chat, NOW
        )
        assert headroom(view, limits, NOW) == headroom(full, limits, NOW)
        for usage in (view, full):
            usage.record(recipient, NOW, new_chat=new_chat)
