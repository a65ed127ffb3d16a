"""Prometheus metrics of one operator instance (own registry, so several instances can coexist).

- `takovm_jobs{phase=...}`: PythonJobs this operator sees, by phase (read from the kopf index at
  scrape time, so it is never stale);
- `takovm_admission_queue_length`: jobs waiting for a slot;
- `takovm_reconcile_seconds`: latency of one reconcile (histogram);
- `takovm_webhook_deliveries_total{outcome=...}`: completion webhook attempts (`delivered`, `retrying`,
  `failed`), sent by the leader.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tako_operator.core.admission import Entry
from tako_vm.delivery.state import attempt_outcome

PHASES = ("Queued", "Pending", "Running", "Succeeded", "Failed", "Timeout", "OOM", "Cancelled")


class _JobsCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        entries = self.metrics.entries()
        by_phase = Counter(e.phase or "Pending" for e in entries)
        jobs = GaugeMetricFamily("takovm_jobs", "PythonJobs by phase", labels=["phase"])
        for phase in PHASES:
            jobs.add_metric([phase], by_phase.get(phase, 0))
        yield jobs
        queue = GaugeMetricFamily("takovm_admission_queue_length", "PythonJobs waiting for a slot")
        queue.add_metric([], len(self.metrics.waiting()))
        yield queue


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.entries: Callable[[], Sequence[Entry]] = list
        self.waiting: Callable[[], Sequence[Any]] = list
        self.reconcile_seconds = Histogram(
            "takovm_reconcile_seconds",
            "Latency of one PythonJob reconcile",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.webhook_deliveries = prometheus_client.Counter(
            "takovm_webhook_deliveries",
            "Completion webhook attempts by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.registry.register(_JobsCollector(self))

    def webhook_attempt(self, state: str) -> None:
        """Count one attempt by the delivery's state after it (``tako_vm.delivery.state``)."""
        self.webhook_deliveries.labels(attempt_outcome(state)).inc()

    def bind(self, entries: Callable[[], Sequence[Entry]], waiting: Callable[[], Sequence[Any]]) -> None:
        self.entries = entries
        self.waiting = waiting

    def serve(self, port: int, host: str = "0.0.0.0") -> Any:
        """Serve /metrics over HTTP in a background thread; returns (server, thread)."""
        return start_http_server(port, addr=host, registry=self.registry)
