"""Telling the application what became of its messages: the callback on outcome.

When a message finishes (sent, dropped, expired, failed, needs_review or cancelled), the
transaction that moves it also writes a row to the outbox of outcomes
(``scheduler.store.outcomes``). The delivery task, run by beat every tick, reads that
outbox and hands each outcome to the application's callback: a Celery task of its own
(``tasks.outcomes``), or a signed webhook (``scheduler.outcomes.webhook``). A row is
marked delivered only once the callback took it, so a crash anywhere in between means
the outcome is delivered again, never lost: delivery is at least once, and the payload's
``id`` (and the message's ``key``) let the application drop a repeat.

A failed delivery is tried again with a doubling delay, and the run stops at the first
failure: a callback that is down costs one attempt a tick, not one a message, and never
holds up dispatch, which runs in tasks of its own. Each claim is leased with a token:
only the run that holds it records how a delivery went, and a run ends well before its
lease does, so two runs never hand out one outcome at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from policies.errors import HealthgateError, cut
from scheduler import constants, metrics
from scheduler.runtime import Runtime
from scheduler.store import outcomes
from scheduler.store.outcomes import Pending

log = logging.getLogger(__name__)


class CallbackFailed(HealthgateError):
    """The callback did not take an outcome; it is tried again later."""


class Callback(Protocol):
    """Hands one outcome to the application, or raises (``CallbackFailed`` or any error)."""

    #: What ``status`` names it by: ``task shop.on_outcome``, ``webhook https://...``.
    target: str

    def deliver(self, outcome: dict[str, Any], now: datetime) -> None: ...

    def close(self) -> None: ...


def payload(outcome: Pending) -> dict[str, Any]:
    """What the callback gets for one outcome: as stored, and the same on every attempt."""
    return {
        # The outcome's own id: the same on every delivery of it, for deduplication.
        "id": f"out_{outcome.id}",
        "type": f"message.{outcome.state}",
        "message_id": outcome.message_id,
        "key": outcome.idempotency_key,
        "state": outcome.state,
        "code": outcome.code,
        "reason": outcome.reason,
        "at": outcome.at.isoformat(),
    }


def retry_delay(attempts: int) -> timedelta:
    """How long after its ``attempts``-th failed delivery an outcome is tried again."""
    seconds = constants.OUTCOME_RETRY_FIRST_SECONDS * 2 ** max(attempts - 1, 0)
    return timedelta(seconds=min(seconds, constants.OUTCOME_RETRY_MAX_SECONDS))


def deliver(
    runtime: Runtime,
    callback: Callback | None,
    now: datetime,
    limit: int = constants.OUTCOME_BATCH,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, int]:
    """Hand the outcomes due to ``callback``, oldest first, ``limit`` claimed at a time
    while any are due and the run's time lasts; what was done, by result.

    Without a callback here, outcomes are left for the worker that has one; when no
    worker has delivered any for a day, nobody is waiting and they are discarded.
    """
    if callback is None:
        with runtime.sessions.begin() as session:
            discarded = outcomes.discard(session, now)
            others = outcomes.listeners(session, now) if not discarded else []
        if others:
            _warn_once(others)
        return {"discarded": discarded} if discarded else {}
    give_up = timedelta(seconds=constants.OUTCOME_GIVE_UP_SECONDS)
    lease = timedelta(seconds=constants.OUTCOME_LEASE_SECONDS)
    with runtime.sessions.begin() as session:
        outcomes.listening(session, callback.target, now)
        abandoned = outcomes.abandon(session, now, give_up)
    if abandoned:
        log.warning(
            "gave up on %d outcomes whose delivery to %s failed for %s",
            abandoned,
            callback.target,
            give_up,
        )
    counts = {"delivered": 0, "failed": 0, "abandoned": abandoned}
    started = clock()
    while clock() - started < constants.OUTCOME_RUN_SECONDS:
        with runtime.sessions.begin() as session:
            claimed = outcomes.claim(session, now, limit, lease)
        sent, failed = _deliver_claimed(runtime, callback, claimed, now, started, clock)
        counts["delivered"] += sent
        counts["failed"] += failed
        # Claimed again after a short claim too: what waited behind an outcome of the
        # same message just delivered is due now.
        if failed or not sent:
            break
    for result, n in counts.items():
        if n:
            metrics.OUTCOME_DELIVERIES.labels(result=result).inc(n)
    return {name: n for name, n in counts.items() if n}


def _deliver_claimed(
    runtime: Runtime,
    callback: Callback,
    claimed: outcomes.Claimed,
    now: datetime,
    started: float,
    clock: Callable[[], float],
) -> tuple[int, int]:
    """Hand one claim's outcomes to ``callback`` until the first failure or the end of
    the run's time; record how it went. How many were delivered, and failed."""
    done: list[int] = []
    failure: tuple[Pending, str] | None = None
    for outcome in claimed.due:
        if clock() - started > constants.OUTCOME_RUN_SECONDS:
            break
        try:
            callback.deliver(payload(outcome), now)
        except Exception as exc:  # any failure of the application's side is retried
            failure = (outcome, cut(f"{type(exc).__name__}: {exc}"))
            break
        done.append(outcome.id)
    tried = len(done) + (failure is not None)
    with runtime.sessions.begin() as session:
        connection = session.connection()
        outcomes.delivered(connection, claimed, done, now)
        if failure is not None:
            outcome, error = failure
            retry_at = now + retry_delay(outcome.attempts + 1)
            outcomes.failed(connection, claimed, outcome, error, retry_at)
            log.warning(
                "outcome %s of %s not delivered to %s (attempt %d, next at %s): %s",
                outcome.id,
                outcome.message_id,
                callback.target,
                outcome.attempts + 1,
                retry_at.isoformat(),
                error,
            )
        outcomes.unclaim(connection, claimed, [outcome.id for outcome in claimed.due[tried:]])
    return len(done), int(failure is not None)


_warned: set[str] = set()


def _warn_once(others: list[str]) -> None:
    """Say once per process that outcomes are left for another worker's callback."""
    if new := [target for target in others if target not in _warned]:
        _warned.update(new)
        log.warning(
            "no callback configured here (HEALTHGATE_OUTCOME_TASK, HEALTHGATE_OUTCOME_URL): "
            "outcomes are left to the workers that deliver them to %s",
            ", ".join(new),
        )
