"""`healthgate run`: the worker, beat and web process as supervised child processes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from types import FrameType
from typing import IO

from scheduler import metrics
from scheduler.settings import Settings

log = logging.getLogger(__name__)

#: Seconds children get to finish their current task after SIGTERM before SIGKILL.
STOP_GRACE_SECONDS = 20.0


def commands(settings: Settings, concurrency: int) -> dict[str, list[str]]:
    """The processes of the main job, the same ones the Procfile names."""
    celery = [sys.executable, "-m", "celery", "-A", "tasks"]
    worker = [*celery, "worker", "--loglevel=INFO", f"--concurrency={concurrency}"]
    if settings.broker.startswith("filesystem"):
        # A single-machine broker has no other workers to sync with or watch.
        worker += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
    return {"worker": worker, "beat": [*celery, "beat", "--loglevel=INFO"], "web": web(settings)}


def web(settings: Settings) -> list[str]:
    """The web process (webhooks, read-only JSON), as the Procfile's ``web`` line runs it."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "scheduler.web:create_app",
        "--host",
        settings.web_host,
        "--port",
        str(settings.web_port),
    ]


def environment(settings: Settings) -> dict[str, str]:
    """The children's environment: this one, with the folder where every process leaves
    its ``/metrics`` counts, emptied of an earlier run's (they would add up otherwise)."""
    folder = metrics.prepare(metrics.directory(settings))
    return {**os.environ, metrics.MULTIPROC_ENV: str(folder.resolve())}


def prefixed(name: str, width: int, line: str) -> str:
    """``worker | line``: one line of a process's output, its name padded to ``width`` so
    the bars of every process line up (as honcho and foreman print them)."""
    return f"{name:<{width}} | {line.rstrip()}\n"


def _relay(name: str, width: int, source: IO[bytes], output: IO[str], lock: threading.Lock) -> None:
    """Copy a child's output line by line, each line prefixed, until the child closes it."""
    with source:
        for raw in source:
            text = prefixed(name, width, raw.decode("utf-8", errors="replace"))
            with lock:
                output.write(text)
                output.flush()


def supervise(
    processes: Mapping[str, Sequence[str]],
    env: Mapping[str, str] | None = None,
    output: IO[str] | None = None,
) -> int:
    """Run every process until one exits or a signal arrives; stop the rest; return a code.

    The processes get ``env`` (this process's environment by default). Each process's
    output and errors are printed to ``output`` (stdout by default), every line prefixed
    with its process's name.
    """
    output = output or sys.stdout
    width = max((len(name) for name in processes), default=0)
    # Python children write each line as it comes, not a buffer's worth at a time.
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    lock = threading.Lock()
    children: dict[str, subprocess.Popen[bytes]] = {}
    relays: list[threading.Thread] = []
    for name, argv in processes.items():
        child = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        children[name] = child
        assert child.stdout is not None
        relay = threading.Thread(
            target=_relay, args=(name, width, child.stdout, output, lock), daemon=True
        )
        relay.start()
        relays.append(relay)
    stopping = False

    def _stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        while not stopping:
            exited = {name: p.returncode for name, p in children.items() if p.poll() is not None}
            if exited:
                name, code = next(iter(exited.items()))
                log.error("%s exited with code %s; stopping the others", name, code)
                code = code or 1
                break
            time.sleep(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _terminate(children.values())
        for relay in relays:
            # Each child has exited: what it wrote last is still to be printed.
            relay.join(timeout=STOP_GRACE_SECONDS)
    return code


def _terminate(children: Iterable[subprocess.Popen[bytes]]) -> None:
    procs = [p for p in children if p.poll() is None]
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
