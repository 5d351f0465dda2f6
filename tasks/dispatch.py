"""The two tasks: beat's tick claims due messages, dispatch gates and sends one batch.

A dispatch whose batch was full claims the next batch itself when it is done, so while
messages are due the workers pull them as fast as they gate and send, whatever the
tick's period; the tick starts that, and picks up what comes due later.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from celery import Celery, Task

from scheduler import constants
from scheduler.dispatch import Claim, claim_due, dispatch_claimed
from scheduler.dispatch.policy_change import apply_policy_change
from scheduler.dispatch.reconcile import reconcile
from scheduler.runtime import Runtime, utcnow
from scheduler.settings import Settings
from scheduler.store.lines import sync_lines
from scheduler.store.policy_state import record_worker
from tasks.logs import summary

log = logging.getLogger(__name__)


def register(app: Celery, runtime: Callable[[], Runtime], settings: Settings) -> None:
    """Register healthgate's tasks on ``app``; ``runtime`` gives this process's runtime."""
    seen = Seen(settings.tick)

    @app.task(name=constants.DISPATCH_TASK, ignore_result=True, shared=False, bind=True)
    def dispatch(task: Task[Any, Any], token: str, ids: list[str]) -> dict[str, int]:
        """Gate and send one claimed batch (a stale token does nothing), then claim the
        next batch when this one was full: more may be due."""
        current = runtime()
        now = utcnow()
        if seen.due(now):
            with current.sessions.begin() as session:
                record_worker(
                    session, worker_name(task), current.policies.loaded().fingerprint, now
                )
        counts = dispatch_claimed(current, Claim(token, ids)).counts
        following = 0
        if len(ids) >= settings.dispatch_batch:
            claim = claim_due(current, utcnow(), settings.dispatch_batch)
            if claim.ids:
                dispatch.apply_async(args=(claim.token, claim.ids))
            following = len(claim.ids)
        done = summary({**counts, "claimed next": following})
        if done:
            log.info("dispatch: %s", done)
        return counts

    @app.task(name=constants.TICK_TASK, ignore_result=True, shared=False, bind=True)
    def tick(task: Task[Any, Any]) -> int:
        """Claim what is due and hand it to dispatch tasks in batches; reconcile stuck
        sends. A policy changed since the last tick first releases what it no longer holds."""
        current = runtime()
        now = utcnow()
        loaded = current.policies.loaded()
        name = worker_name(task)
        with current.sessions.begin() as session:
            sync_lines(session, loaded.policy, now)
            apply_policy_change(session, loaded, now, name)
            record_worker(session, name, loaded.fingerprint, now)
        seen.due(now)
        claim = claim_due(current, now, settings.claim_limit)
        size = settings.dispatch_batch
        for start in range(0, len(claim.ids), size):
            dispatch.apply_async(args=(claim.token, claim.ids[start : start + size]))
        # Sends a dead worker never confirmed: resent with the same key, or flagged.
        reconciled = reconcile(current, now, size)
        # Every two seconds: a line only when there was something to do.
        done = summary({"claimed": len(claim.ids), **reconciled.counts})
        if done:
            log.info("tick: %s", done)
        return len(claim.ids)


def worker_name(task: Task[Any, Any]) -> str:
    """This process as ``healthgate workers`` lists it: Celery's worker name and the pid."""
    return f"{task.request.hostname or socket.gethostname()}/{os.getpid()}"


class Seen:
    """When this process last recorded itself: at most once a tick."""

    def __init__(self, every: timedelta) -> None:
        self.every = every
        self.last: datetime | None = None

    def due(self, now: datetime) -> bool:
        """Whether to record now; counts as recorded."""
        if self.last is not None and self.last <= now < self.last + self.every:
            return False
        self.last = now
        return True
