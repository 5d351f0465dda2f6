"""healthgate's Celery app with workers that SIGKILL themselves at chosen points.

Only the fault suite starts workers on it (``celery -A tests.fault_worker worker``); the
switches below are read here and nowhere in healthgate itself:

- ``HEALTHGATE_FAULT_SEND_KILL``: the chance to die right before, and again right after,
  the ``log`` provider writes a send (between the SEND commit and the provider call,
  and between the provider call and the record of its answer);
- ``HEALTHGATE_FAULT_TASK_KILL``: the chance to die as a dispatch task starts (its
  messages claimed, not yet gated);
- ``HEALTHGATE_FAULT_KILLS``: a file that gets one line per death, written before it;
- ``HEALTHGATE_FAULT_SEED``: mixed with the process id, so each child rolls its own dice.
"""

from __future__ import annotations

import os
import random
import signal
from typing import Any

from celery.signals import task_prerun

from scheduler import constants
from scheduler.providers import Outbound, Sent
from scheduler.providers.log import LogProvider
from tasks.application import create_app

SEND_KILL = float(os.environ.get("HEALTHGATE_FAULT_SEND_KILL", "0"))
TASK_KILL = float(os.environ.get("HEALTHGATE_FAULT_TASK_KILL", "0"))
KILLS = os.environ.get("HEALTHGATE_FAULT_KILLS", "")
SEED = os.environ.get("HEALTHGATE_FAULT_SEED", "0")


class Dice:
    """A random source per process: prefork children must not share their parent's."""

    def __init__(self) -> None:
        self._pid = 0
        self._rng = random.Random()

    def roll(self) -> float:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._rng = random.Random(f"{SEED}-{self._pid}")
        return self._rng.random()


DICE = Dice()


def maybe_die(where: str, chance: float) -> None:
    """SIGKILL this process with ``chance``, noting ``where`` first."""
    if chance <= 0 or DICE.roll() >= chance:
        return
    if KILLS:
        fd = os.open(KILLS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{where} {os.getpid()}\n".encode())
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


_log_send = LogProvider.send


def _dying_send(self: LogProvider, message: Outbound) -> Sent:
    maybe_die("before_send", SEND_KILL)
    sent = _log_send(self, message)
    maybe_die("after_send", SEND_KILL)
    return sent


setattr(LogProvider, "send", _dying_send)  # noqa: B010 (mypy forbids assigning a method)


@task_prerun.connect(weak=False)
def _dispatch_starts(sender: Any = None, **_: Any) -> None:
    if getattr(sender, "name", None) == constants.DISPATCH_TASK:
        maybe_die("after_claim", TASK_KILL)


app = create_app()
