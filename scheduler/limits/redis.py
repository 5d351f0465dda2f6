"""Limits in Redis: one atomic script per line and batch, shared by every worker on every host."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import redis
from redis.exceptions import NoScriptError
from sqlalchemy.orm import Session

from policies.pace import Limits, Verdict
from policies.usage import LineUsage
from scheduler import constants
from scheduler.limits.base import Limiter, Ticket

#: Cap names in the order the script checks them (the first that binds latest wins,
#: as in ``policies.pace.check``).
CAPS = (
    "sends_per_minute",
    "sends_per_day",
    "sends_per_recipient_per_minute",
    "sends_per_recipient_per_day",
    "distinct_recipients_per_hour",
    "new_conversations_per_day",
)

# One call per line, for a batch of that line's sends in order. KEYS: 1 sends (zset:
# attempt -> time), 2 new conversations (zset), 3 recipients (zset: recipient -> last
# time), then per send: sends to its recipient over the last day (zset: the minute's and
# the day's per-recipient caps both read it) and its attempt's marker. ARGV: now, the
# minute, hour and day (all in microseconds), the number of distinct sets of limits
# and each set's six limits in CAPS order (a line's sends mostly share one), then per
# send: attempt key, recipient, new chat (0/1) and its set's number. Returns per send:
# consumed (0/1), the earliest moment and the binding cap's number in CAPS (0 for none).
# Time always comes from the caller: Redis's own clock is not the one the gate decided
# with.
HIT = """
local now = tonumber(ARGV[1])
local MINUTE, HOUR, DAY = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local count = (#KEYS - 3) / 2
-- The length of CAPS: the limits of one set.
local CAPS = 6
local sends = 5 + CAPS * tonumber(ARGV[5])
-- Lua prints numbers with 14 digits; microseconds need 16.
local since = {
  [MINUTE] = string.format('(%.0f', now - MINUTE),
  [HOUR] = string.format('(%.0f', now - HOUR),
  [DAY] = string.format('(%.0f', now - DAY),
}

-- Every send of the call happens at now, so the windows are cleaned once.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - DAY)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - DAY)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - HOUR)
local cleaned = {}
for i = 1, count do
  local to = KEYS[2 + 2 * i]
  if not cleaned[to] then
    redis.call('ZREMRANGEBYSCORE', to, '-inf', now - DAY)
    cleaned[to] = true
  end
end

-- The line's windows, counted once a call: every send of the call is at now, so each
-- one it takes adds what its ZADD adds (a member already there adds nothing).
local line = {
  minute = redis.call('ZCOUNT', KEYS[1], since[MINUTE], '+inf'),
  day = redis.call('ZCOUNT', KEYS[1], since[DAY], '+inf'),
  new = redis.call('ZCOUNT', KEYS[2], since[DAY], '+inf'),
  recipients = redis.call('ZCOUNT', KEYS[3], since[HOUR], '+inf'),
}

-- The earliest moment one more fits under limit in key's window; inside: the window's
-- count when known.
local function earliest(key, limit, window, inside)
  inside = inside or redis.call('ZCOUNT', key, since[window], '+inf')
  if inside < limit then
    return now
  end
  local oldest = redis.call('ZRANGEBYSCORE', key, since[window], '+inf', 'WITHSCORES',
    'LIMIT', inside - limit, 1)
  return tonumber(oldest[2]) + window
end

-- The keys sends were added to, and the window each must outlive.
local expiring = {}

-- Check every cap of send i and consume it only if all pass; the latest cap binds.
local function hit(i)
  local to, marker = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local a = sends + 4 * (i - 1)
  local member, recipient, new_chat = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3] == '1'
  local caps = 5 + CAPS * (tonumber(ARGV[a + 4]) - 1)
  if redis.call('EXISTS', marker) == 1 then
    return 1, now, 0
  end
  local allowed = {
    earliest(KEYS[1], tonumber(ARGV[caps + 1]), MINUTE, line.minute),
    earliest(KEYS[1], tonumber(ARGV[caps + 2]), DAY, line.day),
    earliest(to, tonumber(ARGV[caps + 3]), MINUTE),
    earliest(to, tonumber(ARGV[caps + 4]), DAY),
    now,
    now,
  }
  local last = redis.call('ZSCORE', KEYS[3], recipient)
  if not (last and tonumber(last) > now - HOUR) then
    allowed[5] = earliest(KEYS[3], tonumber(ARGV[caps + 5]), HOUR, line.recipients)
  end
  if new_chat then
    allowed[6] = earliest(KEYS[2], tonumber(ARGV[caps + 6]), DAY, line.new)
  end
  local best, cap = now, 0
  for c = 1, CAPS do
    if allowed[c] > best then
      best, cap = allowed[c], c
    end
  end
  if cap > 0 then
    return 0, best, cap
  end
  if redis.call('ZADD', KEYS[1], now, member) == 1 then
    line.minute, line.day = line.minute + 1, line.day + 1
  else
    -- Already there (from earlier in the day): it moved into the minute.
    line.minute = redis.call('ZCOUNT', KEYS[1], since[MINUTE], '+inf')
  end
  redis.call('ZADD', to, now, member)
  line.recipients = line.recipients + redis.call('ZADD', KEYS[3], now, recipient)
  expiring[KEYS[1]], expiring[to], expiring[KEYS[3]] = DAY, DAY, HOUR
  if new_chat then
    line.new = line.new + redis.call('ZADD', KEYS[2], now, member)
    expiring[KEYS[2]] = DAY
  end
  redis.call('SET', marker, 1, 'PX', math.floor(DAY / 1000))
  return 1, now, 0
end

local replies = {}
for i = 1, count do
  local consumed, best, cap = hit(i)
  replies[3 * i - 2], replies[3 * i - 1], replies[3 * i] = consumed, best, cap
end
-- Every key a send was added to lives as long as its window after now, set once.
for key, window in pairs(expiring) do
  redis.call('PEXPIRE', key, math.floor(window / 1000))
end
return replies
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE, _HOUR, _DAY = 60_000_000, 3_600_000_000, constants.LIMITS_DAY_SECONDS * 1_000_000


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _moment(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _verdict(reply: list[int], position: int, limits: Limits, now: datetime) -> Verdict:
    """The verdict on the send at ``position`` of a script call's reply."""
    consumed, when, cap = reply[3 * position : 3 * position + 3]
    if consumed:
        return Verdict(now, "", 0)
    name = CAPS[int(cap) - 1]
    return Verdict(_moment(int(when)), name, getattr(limits, name))


class _Call(NamedTuple):
    """One script call: a line's keys and arguments, for its sends in order."""

    keys: list[str]
    args: list[str | int]


class RedisLimiter(Limiter):
    """Sliding windows in sorted sets, checked and consumed by one Lua script per line.

    Every key of a line shares a hash tag (``{+14155550100}``), so a script call over one
    line's keys lives in one slot of a Redis Cluster too. A batch makes one call per line
    and sends them all in one pipeline: one round trip.
    """

    def __init__(self, client: redis.Redis, prefix: str = constants.LIMITS_KEY_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._hit = client.register_script(HIT)

    @classmethod
    def from_url(cls, url: str) -> RedisLimiter:
        return cls(redis.Redis.from_url(url))

    def hit(self, session: Session, ticket: Ticket, limits: Limits, now: datetime) -> Verdict:
        (reply,) = self._run([self._call(ticket.line, [(ticket, limits)], _micros(now))])
        return _verdict(reply, 0, limits, now)

    def hit_many(
        self, session: Session, requests: Sequence[tuple[Ticket, Limits]], now: datetime
    ) -> list[Verdict]:
        by_line: dict[str, list[int]] = {}
        for index, (ticket, _) in enumerate(requests):
            by_line.setdefault(ticket.line, []).append(index)
        at = _micros(now)
        calls = [
            self._call(line, [requests[index] for index in indexes], at)
            for line, indexes in by_line.items()
        ]
        verdicts: dict[int, Verdict] = {}
        for indexes, reply in zip(by_line.values(), self._run(calls), strict=True):
            for position, index in enumerate(indexes):
                verdicts[index] = _verdict(reply, position, requests[index][1], now)
        return [verdicts[index] for index in range(len(requests))]

    def _call(self, line: str, requests: Sequence[tuple[Ticket, Limits]], at: int) -> _Call:
        """The script call for one line's sends, in the order given."""
        base = f"{self.prefix}{{{line}}}:"
        keys = [base + "sends", base + "new", base + "recipients"]
        numbered: dict[Limits, int] = {}
        sends: list[str | int] = []
        for ticket, limits in requests:
            keys.extend((base + f"to:{ticket.recipient}", base + f"hit:{ticket.key}"))
            number = numbered.setdefault(limits, len(numbered) + 1)
            sends.extend((ticket.key, ticket.recipient, int(ticket.new_chat), number))
        caps = [getattr(limits, name) for limits in numbered for name in CAPS]
        return _Call(keys, [at, _MINUTE, _HOUR, _DAY, len(numbered), *caps, *sends])

    def _run(self, calls: list[_Call]) -> list[list[int]]:
        """Every call's reply, in order; a lone call skips the pipeline's bookkeeping."""
        if len(calls) == 1:
            return [self._hit(keys=calls[0].keys, args=calls[0].args)]
        replies = self._pipelined(calls)
        lost = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if lost:
            # The server dropped its scripts (a restart, SCRIPT FLUSH); those calls ran
            # nothing, so they are sent again once the script is back.
            self.client.script_load(self._hit.script)
            for index, reply in zip(lost, self._pipelined([calls[i] for i in lost]), strict=True):
                replies[index] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _pipelined(self, calls: list[_Call]) -> list[Any]:
        """The calls' replies from one round trip, errors returned in place."""
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(self._hit.sha, len(call.keys), *call.keys, *call.args)
        return pipe.execute(raise_on_error=False)

    def windows(
        self,
        lines: Mapping[int, str],
        limits: Mapping[int, Limits],
        now: datetime,
        headroom: int,
        recipients: Mapping[int, Collection[str]],
        single: Collection[str] = (),
    ) -> dict[int, LineUsage]:
        """The caps' windows as the script counts them: one round trip for every line's
        counts (and the per-recipient windows of the recipients not in ``single``), one
        more for the times of the windows within ``headroom`` of a cap (never more times
        than the cap and the headroom), a recipient's day among them.

        A recipient in ``single`` has one send in the batch: while every window of its
        line is farther than ``headroom`` from its cap, its own windows are not read. The
        gate then sees none of its sends and lets it through to the script, which checks
        every cap when it consumes and gives the verdict the gate would have given; and
        the send the gate counted for it cannot bring a line cap in reach. Near a cap, its
        windows are read as any other's.
        """
        since = _Since.at(_micros(now))
        asked = [
            (line_id, f"{self.prefix}{{{number}}}:", sorted(recipients.get(line_id, ())))
            for line_id, number in lines.items()
        ]
        alone = set(single)
        pipe = self.client.pipeline(transaction=False)
        for _, base, whom in asked:
            pipe.zcount(base + "sends", since.minute, "+inf")
            pipe.zcount(base + "sends", since.day, "+inf")
            pipe.zcount(base + "new", since.day, "+inf")
            pipe.zcount(base + "recipients", since.hour, "+inf")
            for recipient in whom:
                if recipient not in alone:
                    _ask_recipient(pipe, base, recipient, since)
        replies = iter(pipe.execute())
        timed = self.client.pipeline(transaction=False)
        wanted: list[tuple[LineUsage, str]] = []
        # Counts far from their caps are set once every recipient read is in: the hour's
        # recipients not already known are the count less those read.
        counted: list[tuple[LineUsage, str, int]] = []
        usage: dict[int, LineUsage] = {}
        for line_id, base, whom in asked:
            counts = [int(next(replies)) for _ in range(4)]
            entry = usage[line_id] = LineUsage(day_count=counts[1])
            daily = limits[line_id].sends_per_recipient_per_day
            caps = _window_caps(limits[line_id])
            near = any(count + headroom >= cap for count, cap in zip(counts, caps, strict=True))
            for recipient in whom:
                if recipient not in alone:
                    got = (next(replies), next(replies), int(next(replies)))
                    to = _read_recipient(entry, recipient, got, since, headroom, daily)
                    if to is not None:
                        timed.zrangebyscore(base + to, since.day, "+inf", withscores=True)
                        wanted.append((entry, to))
                elif near:
                    # Near a line cap: its own windows too, in full, with the times.
                    _ask_recipient(timed, base, recipient, since, whole_day=True)
                    wanted.append((entry, f"whole:{recipient}"))
            for name, key, start, count, cap in zip(
                ("recent", "day", "new_chats", "recipients"),
                (base + "sends", base + "sends", base + "new", base + "recipients"),
                (since.minute, since.day, since.day, since.hour),
                counts,
                caps,
                strict=True,
            ):
                _ask_window(
                    timed, wanted, counted, entry, (name, key, start), count, cap - headroom
                )
        if wanted:
            _fill_all(wanted, iter(timed.execute()), since)
        for entry, name, count in counted:
            _count_only(entry, name, count)
        return usage

    def close(self) -> None:
        self.client.close()


class _Since(NamedTuple):
    """``now`` and the exclusive lower bounds of its windows, as Redis score ranges."""

    now: int
    minute: str
    hour: str
    day: str

    @classmethod
    def at(cls, now: int) -> _Since:
        return cls(now, f"({now - _MINUTE}", f"({now - _HOUR}", f"({now - _DAY}")


def _ask_window(
    timed: Any,
    wanted: list[tuple[LineUsage, str]],
    counted: list[tuple[LineUsage, str, int]],
    entry: LineUsage,
    window: tuple[str, str, str],
    count: int,
    reach: int,
) -> None:
    """Queue the times of a window whose ``count`` is within reach of its cap (``reach``:
    the cap less the batch's headroom); else keep its count alone."""
    name, key, start = window
    if count >= reach:
        timed.zrangebyscore(key, start, "+inf", withscores=True)
        wanted.append((entry, name))
    else:
        counted.append((entry, name, count))


def _ask_recipient(
    pipe: Any, base: str, recipient: str, since: _Since, whole_day: bool = False
) -> None:
    """Queue the reads of one recipient's windows: its last send of the hour, its sends of
    the minute, and its day's count (or, with ``whole_day``, the day's times)."""
    pipe.zscore(base + "recipients", recipient)
    pipe.zrangebyscore(base + f"to:{recipient}", since.minute, "+inf", withscores=True)
    if whole_day:
        pipe.zrangebyscore(base + f"to:{recipient}", since.day, "+inf", withscores=True)
    else:
        pipe.zcount(base + f"to:{recipient}", since.day, "+inf")


def _read_recipient(
    entry: LineUsage,
    recipient: str,
    got: tuple[Any, Any, int],
    since: _Since,
    headroom: int,
    daily: int,
) -> str | None:
    """Fill ``entry`` with one recipient's windows; the key of its day's times when they
    must be read too (its day within ``headroom`` of the cap)."""
    last, recent, today = got
    if recent:
        entry.by_recipient[recipient] = [_moment(int(at)) for _, at in recent]
    elif last is not None and int(last) > since.now - _HOUR:
        entry.by_recipient[recipient] = [_moment(int(last))]
    if today + headroom >= daily:
        return f"to:{recipient}"
    if today:
        entry.recipient_day_unloaded[recipient] = today
    return None


def _fill_all(wanted: list[tuple[LineUsage, str]], replies: Any, since: _Since) -> None:
    """Fill each entry with the second round trip's replies, in the order asked."""
    for entry, name in wanted:
        if name.startswith("whole:"):
            recipient = name.removeprefix("whole:")
            last, recent, day = next(replies), next(replies), next(replies)
            _read_recipient(entry, recipient, (last, recent, 0), since, 0, 1)
            if day:
                entry.recipient_day[recipient] = [_moment(int(at)) for _, at in day]
        else:
            _fill(entry, name, next(replies))


def _window_caps(limits: Limits) -> tuple[int, int, int, int]:
    """The caps of the minute, the day, new conversations and recipients an hour."""
    return (
        limits.sends_per_minute,
        limits.sends_per_day,
        limits.new_conversations_per_day,
        limits.distinct_recipients_per_hour,
    )


def _count_only(entry: LineUsage, name: str, count: int) -> None:
    """A window far from its cap: its count, without its times."""
    if name == "recent":
        entry.recent_unloaded = count
    elif name == "new_chats":
        entry.new_chats_unloaded = count
    elif name == "recipients":
        entry.recipients_unloaded = max(0, count - len(entry.by_recipient))


def _fill(entry: LineUsage, name: str, reply: list[tuple[bytes, float]]) -> None:
    """A window near its cap, from its members and their times."""
    if name.startswith("to:"):
        entry.recipient_day[name.removeprefix("to:")] = [_moment(int(at)) for _, at in reply]
    elif name == "recipients":
        for member, at in reply:
            entry.by_recipient.setdefault(member.decode(), [_moment(int(at))])
    else:
        setattr(entry, name, [_moment(int(at)) for _, at in reply])
