"""``GET /metrics``: Prometheus's text format, behind ``HEALTHGATE_METRICS_TOKEN``.

The counters and the histogram are the processes' own (``scheduler.metrics``), added up
over every process that shares ``PROMETHEUS_MULTIPROC_DIR`` when it is set. The queue,
line and chat levels are read from the store at each scrape, here only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from scheduler import access, metrics
from scheduler.runtime import Runtime, utcnow
from scheduler.settings import Settings
from scheduler.store.gauges import levels


class StoreCollector(Collector):
    """The store's levels as gauges, read when scraped."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.runtime.reads.begin() as session:
            now = utcnow()
            seen = levels(session, now)
        queue = GaugeMetricFamily(
            "healthgate_queue_messages",
            "Messages not finished, by state and line (empty: no line chosen yet).",
            labels=["state", "line"],
        )
        for (state, line), n in sorted(seen.queue.items()):
            queue.add_metric([state, line], n)
        lines = GaugeMetricFamily(
            "healthgate_lines", "Lines by reputation and status.", labels=["reputation", "status"]
        )
        for (reputation, status), n in sorted(seen.lines.items()):
            lines.add_metric([reputation, status], n)
        chats = GaugeMetricFamily(
            "healthgate_unhealthy_chats",
            "Chats not HEALTHY, by health (AT_RISK, CRITICAL, OPTED_OUT) and line.",
            labels=["health", "line"],
        )
        for (health, line), n in sorted(seen.chats.items()):
            chats.add_metric([health, line], n)
        yield from (queue, lines, chats)
        yield GaugeMetricFamily(
            "healthgate_oldest_due_age_seconds",
            "How long the waiting message due longest has been due (0: none is due).",
            value=seen.oldest_due_seconds,
        )
        yield GaugeMetricFamily(
            "healthgate_outcomes_undelivered",
            "Outcomes of finished messages not yet told to the application's callback.",
            value=seen.outcomes_undelivered,
        )
        yield GaugeMetricFamily(
            "healthgate_oldest_outcome_due_age_seconds",
            "How long the undelivered outcome due longest has been due (0: none waits).",
            value=seen.oldest_outcome_seconds,
        )


class _Own(Collector):
    """This process's own metrics (a single process: no multiprocess folder)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def scrape_registry(runtime: Runtime) -> CollectorRegistry:
    """What one scrape shows: every process's counts, and the store's levels."""
    registry = CollectorRegistry(auto_describe=False)
    folder = os.environ.get(metrics.MULTIPROC_ENV)
    if folder:
        MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Own())
    registry.register(StoreCollector(runtime))
    return registry


def metrics_routes(app: FastAPI, runtime: Runtime, settings: Settings) -> None:
    guard = Depends(access.metrics_guard(settings))

    @app.get("/metrics", dependencies=[guard], include_in_schema=False)
    def scrape() -> Response:
        """Every counter and level, in Prometheus's text format."""
        return Response(generate_latest(scrape_registry(runtime)), media_type=CONTENT_TYPE_LATEST)
