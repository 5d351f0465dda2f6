"""Global line limits: one interface, an in-memory, a database and a Redis backend."""

from __future__ import annotations

from scheduler.limits.base import Limiter, Ticket
from scheduler.limits.database import DatabaseLimiter
from scheduler.limits.memory import MemoryLimiter
from scheduler.limits.redis import RedisLimiter

__all__ = ["DatabaseLimiter", "Limiter", "MemoryLimiter", "RedisLimiter", "Ticket"]
