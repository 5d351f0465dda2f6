"""Everything a process needs, built from settings and passed around explicitly."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from policies.changes import described, diff, fingerprint, normalised
from policies.config import Policy, load_policy
from policies.errors import InvalidInput, PolicyFileError
from scheduler.limits import DatabaseLimiter, Limiter, RedisLimiter
from scheduler.settings import Settings, masked_url
from scheduler.store.db import engine_for, read_sessions, session_factory

if TYPE_CHECKING:
    from scheduler.providers import Provider, Providers

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    """The one clock healthgate reads (tests freeze it with freezegun)."""
    return datetime.now(UTC)


class Loaded(NamedTuple):
    """A policy as loaded: its normal form, fingerprint and the file's modification time."""

    policy: Policy
    normal: dict[str, Any]
    fingerprint: str
    #: The file's modification time (ns) when it was read: which of two files is newer.
    mtime_ns: int


@dataclass
class PolicySource:
    """The policy file, reloaded when it changes so tuning needs no restart.

    A file that no longer validates is reported and the last good policy is kept:
    a typo must not stop dispatch. Each reload is logged with what changed and the new
    policy's fingerprint.
    """

    path: Path
    _loaded: Loaded | None = field(default=None, init=False)
    _stamp: tuple[int, int] | None = field(default=None, init=False)

    def current(self) -> Policy:
        return self.loaded().policy

    def loaded(self) -> Loaded:
        """The policy in force, with its fingerprint (the file read again if it changed)."""
        try:
            stat = os.stat(self.path)
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        if self._loaded is not None and stamp == self._stamp:
            return self._loaded
        try:
            policy = load_policy(self.path)
        except PolicyFileError as exc:
            if self._loaded is None:
                raise
            log.error(
                "policy file not reloaded, keeping the previous one: %s (fingerprint %s kept)",
                exc,
                self._loaded.fingerprint,
            )
            self._stamp = stamp
            return self._loaded
        normal = normalised(policy)
        loaded = Loaded(policy, normal, fingerprint(normal), stamp[0] if stamp else 0)
        previous, self._loaded, self._stamp = self._loaded, loaded, stamp
        if previous is None:
            log.info("policy loaded from %s: fingerprint %s", self.path, loaded.fingerprint)
        else:
            log.info(
                "policy reloaded from %s: fingerprint %s (was %s); changed: %s",
                self.path,
                loaded.fingerprint,
                previous.fingerprint,
                described(diff(previous.normal, normal)),
            )
        return loaded


@dataclass
class Runtime:
    """The database, the policy, the providers and the limiter of one process."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    policies: PolicySource
    providers: Providers
    #: Global caps: in Redis when ``redis_url`` is set, counted in the database otherwise.
    limiter: Limiter = field(default_factory=DatabaseLimiter)
    #: The time of a provider's answer; a simulation passes its own clock.
    clock: Callable[[], datetime] = utcnow

    @classmethod
    def build(cls, settings: Settings, providers: dict[str, Provider] | None = None) -> Runtime:
        # Imported here: a command that only reads (status, explain) loads no provider code.
        from scheduler.providers import Providers

        engine = engine_for(settings)
        policies = PolicySource(settings.policy_file)
        try:
            limiter = _limiter(settings)
        except InvalidInput:
            engine.dispose()
            raise
        log.info(
            "healthgate: database %s, caps counted in %s",
            masked_url(settings.database),
            masked_url(settings.redis_url) if settings.redis_url else "the database",
        )
        return cls(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine),
            policies=policies,
            providers=Providers(settings, providers, policies.current),
            limiter=limiter,
        )

    @property
    def policy(self) -> Policy:
        return self.policies.current()

    @cached_property
    def reads(self) -> sessionmaker[Session]:
        """Sessions that only read (see ``store.db.read_sessions``)."""
        return read_sessions(self.engine)

    def close(self) -> None:
        self.providers.close()
        self.limiter.close()
        self.engine.dispose()


def _limiter(settings: Settings) -> Limiter:
    """Redis when ``redis_url`` is set, else the database; a bad URL is named, masked."""
    if not settings.redis_url:
        return DatabaseLimiter()
    try:
        return RedisLimiter.from_url(settings.redis_url)
    except ValueError:
        # redis-py's messages may quote parts of the URL.
        url = masked_url(settings.redis_url)
        raise InvalidInput("HEALTHGATE_REDIS_URL", url, "is not a Redis URL") from None
