"""The Redis limiter's view of a batch's windows decides as the full record of its sends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policies.pace import Limits, Verdict, check, headroom
from policies.usage import DAY, HOUR, MINUTE, LineUsage
from scheduler.limits import RedisLimiter, Ticket
from scheduler.limits.redis import CAPS
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


class Model:
    """A small model of a line's caps: every send kept, each cap checked by counting."""

    def __init__(self) -> None:
        #: (time, recipient, starts a conversation), in the order taken.
        self.sends: list[tuple[datetime, str, bool]] = []

    def verdict(self, limits: Limits, recipient: str, new_chat: bool, now: datetime) -> Verdict:
        """The latest of the moments each cap allows one more send (the first cap in
        ``CAPS`` order when two bind as late), or ``now`` when every cap has room."""

        def earliest(times: list[datetime], limit: int, window: timedelta) -> datetime:
            inside = sorted(at for at in times if at > now - window)
            return now if len(inside) < limit else inside[len(inside) - limit] + window

        line = [at for at, _, _ in self.sends]
        to = [at for at, whom, _ in self.sends if whom == recipient]
        last = {whom: at for at, whom, _ in sorted(self.sends)}
        seen = last.get(recipient)
        distinct = (
            now
            if seen is not None and seen > now - HOUR
            else earliest(list(last.values()), limits.distinct_recipients_per_hour, HOUR)
        )
        allowed = {
            "sends_per_minute": earliest(line, limits.sends_per_minute, MINUTE),
            "sends_per_day": earliest(line, limits.sends_per_day, DAY),
            "sends_per_recipient_per_minute": earliest(
                to, limits.sends_per_recipient_per_minute, MINUTE
            ),
            "sends_per_recipient_per_day": earliest(to, limits.sends_per_recipient_per_day, DAY),
            "distinct_recipients_per_hour": distinct,
            "new_conversations_per_day": earliest(
                [at for at, _, new in self.sends if new], limits.new_conversations_per_day, DAY
            )
            if new_chat
            else now,
        }
        best = Verdict(now, "", 0)
        for cap in CAPS:
            if allowed[cap] > best.allowed_at:
                best = Verdict(allowed[cap], cap, getattr(limits, cap))
        return best

    def take(self, limits: Limits, recipient: str, new_chat: bool, now: datetime) -> Verdict:
        verdict = self.verdict(limits, recipient, new_chat, now)
        if verdict.allowed_at <= now:
            self.sends.append((now, recipient, new_chat))
        return verdict


#: Line caps far out of a batch's reach with tight caps per recipient (the recipients'
#: own windows are then left to the script), or anything (near: they are read).
far_or_any = st.one_of(
    limits_strategy,
    st.builds(
        Limits,
        sends_per_minute=st.integers(100, 1000),
        sends_per_day=st.integers(100, 1000),
        sends_per_recipient_per_minute=st.integers(1, 4),
        sends_per_recipient_per_day=st.integers(1, 12),
        distinct_recipients_per_hour=st.integers(100, 1000),
        new_conversations_per_day=st.integers(100, 1000),
    ),
)
#: A batch of sends to distinct recipients: recipient index, starts a conversation.
single_batches = st.lists(
    st.tuples(st.integers(0, len(RECIPIENTS) - 1), st.booleans()),
    max_size=6,
    unique_by=lambda send: send[0],
)


@settings(max_examples=examples(80), deadline=None)
@given(sends=past_sends, limits=far_or_any, batch=single_batches)
@example(  # near the minute's cap: a send the script would refuse must not count for the next
    sends=[(0, 10, False), (1, 20, False)],
    limits=Limits(3, 1000, 1, 1000, 1000, 1000),
    batch=[(0, False), (2, False)],
)
def test_the_gate_on_the_view_then_the_script_give_the_models_verdicts(
    limiter: RedisLimiter,
    sends: list[tuple[int, int, bool]],
    limits: Limits,
    batch: list[tuple[int, bool]],
) -> None:
    # Given a line's sends of the last day, taken by the limiter and by the model
    limiter.prefix = f"test:{uuid.uuid4().hex[:8]}:"
    model = Model()
    started: set[int] = set()
    for i, (n, seconds, new) in enumerate(sorted(sends, key=lambda s: -s[1])):
        at = NOW - timedelta(seconds=seconds)
        new_chat = new and n not in started
        started |= {n} if new_chat else set()
        ticket = Ticket(f"m{i}", 1, LINE, RECIPIENTS[n], new_chat)
        limiter.hit_many(None, [(ticket, TAKES_ALL)], at)  # type: ignore[arg-type]
        model.take(TAKES_ALL, RECIPIENTS[n], new_chat, at)

    # When a batch to distinct recipients is decided as dispatch does: the gate checks
    # each send against the limiter's view (the recipients' own windows left to the
    # script while the line is far from its caps), counting what it passes, then the
    # script takes the passed sends in one call
    whom = {RECIPIENTS[n] for n, _ in batch}
    view = limiter.windows({1: LINE}, {1: limits}, NOW, len(batch), {1: whom}, single=whom)[1]
    decided: dict[int, Verdict] = {}
    asked: list[tuple[int, tuple[Ticket, Limits]]] = []
    for i, (n, new_chat) in enumerate(batch):
        verdict = check(view, limits, RECIPIENTS[n], new_chat, NOW)
        if verdict.allowed_at > NOW:
            decided[i] = verdict
            continue
        view.record(RECIPIENTS[n], NOW, new_chat=new_chat)
        asked.append((i, (Ticket(f"b{i}", 1, LINE, RECIPIENTS[n], new_chat), limits)))
    answers = limiter.hit_many(None, [request for _, request in asked], NOW)  # type: ignore[arg-type]
    decided.update((i, answer) for (i, _), answer in zip(asked, answers, strict=True))

    # Then every send gets the verdict of the model, which counts every send in full
    expected = [model.take(limits, RECIPIENTS[n], new, NOW) for n, new in batch]
    assert [decided[i] for i in range(len(batch))] == expected
