"""Prometheus metrics of one `serve` process, in a registry of its own."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "TimedLog"]


class Metrics:
    """The counters, gauges and histograms `/metrics` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("vmledger_http_requests_total", "HTTP requests by endpoint, method and status",
                                ("endpoint", "method", "status"), registry=self.registry)
        self.outcomes = Counter("vmledger_outcomes_total", "Outcomes of set requests by scope and status",
                                ("scope", "status"), registry=self.registry)
        self.drift_rows = Gauge("vmledger_drift_rows", "Drift rows (live differs from persistent), at the last scrape",
                                registry=self.registry)
        self.append_seconds = Histogram(
            "vmledger_append_seconds", "Time from asking the log to append to the durable commit",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry)
        self.subscribers = Gauge("vmledger_stream_subscribers", "Open event streams (SSE)", registry=self.registry)
        self.batch_size = Histogram(
            "vmledger_group_commit_batch_size", "Appends committed together, as seen by this process's appends",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)

    def render(self) -> bytes:
        """Return the metrics in the Prometheus text format."""
        return generate_latest(self.registry)


class TimedLog:
    """An event log that times each append into `Metrics`; every other attribute is the wrapped log's.

    Appends in flight at once were committed together by the group commit
    (SQLite) or waited for one another (PostgreSQL's append lock), so the
    number in flight when an append finishes stands for its batch size.
    """

    def __init__(self, log: Any, metrics: Metrics) -> None:
        self._log = log
        self._metrics = metrics
        self._in_flight = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def append(self, *args: Any, **kwargs: Any) -> Any:
        """Append through the wrapped log, timing it."""
        started = time.perf_counter()
        self._in_flight += 1
        try:
            return await self._log.append(*args, **kwargs)
        finally:
            self._metrics.batch_size.observe(self._in_flight)
            self._in_flight -= 1
            self._metrics.append_seconds.observe(time.perf_counter() - started)
