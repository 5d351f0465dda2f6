"""Real Celery worker processes for the benchmark, and their memory sampled from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def celery(app: str, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``celery -A app ...`` from the project's root, quiet."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", app, *args, "--loglevel=WARNING"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def worker(app: str, queue: str, env: dict[str, str], processes: int) -> subprocess.Popen[bytes]:
    return celery(
        app,
        "worker",
        f"--concurrency={processes}",
        "--pool=prefork",
        "--without-mingle",
        "--without-gossip",
        f"--queues={queue}",
        env=env,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples the RSS of a worker's pool processes every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        #: (seconds since start, the largest pool process's RSS, the pool's total RSS), KiB.
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            sizes = [rss_kib(pid) for pid in [self.pid, *_children(self.pid)]]
            self.samples.append((time.monotonic() - self._start, max(sizes[1:] or [0]), sum(sizes)))

    def summary(self, busy: Callable[[float], bool]) -> dict[str, float]:
        """Peak RSS, and the pool's RSS early and late in the busy part of the run."""
        during = [s for s in self.samples if busy(s[0])] or self.samples
        if not during:
            return {}
        quarter = max(len(during) // 4, 1)
        early = max(s[2] for s in during[:quarter])
        late = max(s[2] for s in during[-quarter:])
        return {
            "peak_process_mib": round(max(s[1] for s in self.samples) / 1024, 1),
            "peak_total_mib": round(max(s[2] for s in self.samples) / 1024, 1),
            "first_quarter_total_mib": round(early / 1024, 1),
            "last_quarter_total_mib": round(late / 1024, 1),
            "growth_percent": round((late - early) / early * 100, 1) if early else 0.0,
            "samples": len(self.samples),
        }
