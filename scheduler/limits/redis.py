"""Limits in Redis: one atomic script per send, shared by every worker on every host."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy.orm import Session

from policies.pace import Limits, Verdict
from scheduler import constants
from scheduler.limits.base import Limiter, Ticket

#: Cap names in the order the script checks them (the first that binds latest wins,
#: as in ``policies.pace.check``).
CAPS = (
    "sends_per_minute",
    "sends_per_day",
    "sends_per_recipient_per_minute",
    "distinct_recipients_per_hour",
    "new_conversations_per_day",
)

# KEYS: 1 sends (zset: attempt -> time), 2 new conversations (zset), 3 sends to this
# recipient (zset), 4 recipients (zset: recipient -> last time), 5 this attempt's marker.
# ARGV: now (microseconds), attempt key, recipient, new chat (0/1), the five limits in
# CAPS order, then the minute, hour and day in microseconds. Time always comes from the
# caller: Redis's own clock is not the one the gate decided with.
HIT = """
local now = tonumber(ARGV[1])
local member, recipient, new_chat = ARGV[2], ARGV[3], ARGV[4] == '1'
local MINUTE, HOUR, DAY = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
if redis.call('EXISTS', KEYS[5]) == 1 then
  return {1, now, 0}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - DAY)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - DAY)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - MINUTE)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - HOUR)

local function earliest(key, limit, window)
  -- Lua prints numbers with 14 digits; microseconds need 16.
  local low = string.format('(%.0f', now - window)
  local inside = redis.call('ZCOUNT', key, low, '+inf')
  if inside < limit then
    return now
  end
  local oldest = redis.call('ZRANGEBYSCORE', key, low, '+inf', 'WITHSCORES', 'LIMIT',
    inside - limit, 1)
  return tonumber(oldest[2]) + window
end

local allowed = {
  earliest(KEYS[1], tonumber(ARGV[5]), MINUTE),
  earliest(KEYS[1], tonumber(ARGV[6]), DAY),
  earliest(KEYS[3], tonumber(ARGV[7]), MINUTE),
  now,
  now,
}
local last = redis.call('ZSCORE', KEYS[4], recipient)
if not (last and tonumber(last) > now - HOUR) then
  allowed[4] = earliest(KEYS[4], tonumber(ARGV[8]), HOUR)
end
if new_chat then
  allowed[5] = earliest(KEYS[2], tonumber(ARGV[9]), DAY)
end
local best, cap = now, 0
for i = 1, 5 do
  if allowed[i] > best then
    best, cap = allowed[i], i
  end
end
if cap > 0 then
  return {0, best, cap}
end
redis.call('ZADD', KEYS[1], now, member)
redis.call('ZADD', KEYS[3], now, member)
redis.call('ZADD', KEYS[4], now, recipient)
redis.call('PEXPIRE', KEYS[1], math.floor(DAY / 1000))
redis.call('PEXPIRE', KEYS[3], math.floor(MINUTE / 1000))
redis.call('PEXPIRE', KEYS[4], math.floor(HOUR / 1000))
if new_chat then
  redis.call('ZADD', KEYS[2], now, member)
  redis.call('PEXPIRE', KEYS[2], math.floor(DAY / 1000))
end
redis.call('SET', KEYS[5], 1, 'PX', math.floor(DAY / 1000))
return {1, now, 0}
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE, _HOUR, _DAY = 60_000_000, 3_600_000_000, constants.LIMITS_DAY_SECONDS * 1_000_000


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _moment(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


class RedisLimiter(Limiter):
    """Sliding windows in sorted sets, checked and consumed by one Lua script.

    Every key of a line shares a hash tag (``{+14155550100}``), so the script's keys live
    in one slot of a Redis Cluster too.
    """

    def __init__(self, client: redis.Redis, prefix: str = constants.LIMITS_KEY_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._hit = client.register_script(HIT)

    @classmethod
    def from_url(cls, url: str) -> RedisLimiter:
        return cls(redis.Redis.from_url(url))

    def keys(self, ticket: Ticket) -> list[str]:
        base = f"{self.prefix}{{{ticket.line}}}:"
        return [
            base + "sends",
            base + "new",
            base + f"to:{ticket.recipient}",
            base + "recipients",
            base + f"hit:{ticket.key}",
        ]

    def hit(self, session: Session, ticket: Ticket, limits: Limits, now: datetime) -> Verdict:
        at = _micros(now)
        consumed, when, cap = self._hit(
            keys=self.keys(ticket),
            args=[
                at,
                ticket.key,
                ticket.recipient,
                int(ticket.new_chat),
                *(getattr(limits, name) for name in CAPS),
                _MINUTE,
                _HOUR,
                _DAY,
            ],
        )
        if consumed:
            return Verdict(now, "", 0)
        name = CAPS[int(cap) - 1]
        return Verdict(_moment(int(when)), name, getattr(limits, name))

    def close(self) -> None:
        self.client.close()
