"""Prometheus metrics of one shim process (own registry, so several shims in one process coexist).

Served at ``GET /metrics`` (``tako_shim.http.ops``); docs/metrics.md lists every metric. What a metric may
carry is the security rule of this module: aggregate numbers only, never a tenant, job id, session id,
code or URL, and every label has a bounded set of values:

- ``route``: the route template (``/jobs/{job_id}``), never the raw path; no route matched is
  ``unmatched``, so scanning random paths adds no series;
- ``method``: the HTTP methods the API uses, anything else ``other``;
- ``status``: the HTTP status code, or a job's terminal status (``succeeded``, ``failed``, ...);
- ``job_type``: a configured job type (the shim refuses others at submit); past ``MAX_JOB_TYPES``
  distinct names the rest are ``other``;
- ``outcome``: a webhook attempt's result (``delivered``, ``retrying``, ``failed``).

Backends count submissions, finishes and webhook attempts; gauges (queue depth, running jobs, open
sessions) are read from the backend at scrape time (``Gauges``), open SSE streams from the web layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tako_vm.delivery.state import attempt_outcome

MAX_JOB_TYPES = 50
UNMATCHED_ROUTE = "unmatched"
OTHER = "other"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Gauges:
    """What a backend knows at scrape time; ``None``: this backend does not know it (not exported)."""

    queue_depth: int | None = None
    jobs_running: int | None = None
    sessions_open: int | None = None


class _GaugeCollector(Collector):
    def __init__(self, metrics: ShimMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauges, streams = self.metrics.snapshot
        for name, help_text, value in (
            ("takovm_shim_queue_depth", "Jobs waiting for a worker (local backend)", gauges.queue_depth),
            ("takovm_shim_jobs_running", "Jobs running now (local backend)", gauges.jobs_running),
            ("takovm_shim_sessions_open", "Sessions not ended (local backend)", gauges.sessions_open),
            ("takovm_shim_sse_streams_open", "Server-Sent Events streams open", streams),
        ):
            family = GaugeMetricFamily(name, help_text)
            if value is not None:
                family.add_metric([], value)
            yield family


class ShimMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauges: Callable[[], Gauges] = Gauges
        self.streams_open: Callable[[], int | None] = lambda: None
        self.snapshot: tuple[Gauges, int | None] = (Gauges(), None)  # read by ``refresh``
        self._job_types: set[str] = set()
        self.requests = Counter(
            "takovm_shim_http_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "takovm_shim_http_request_duration_seconds",
            "HTTP request latency by route template (an SSE stream counts until it ends)",
            ["route", "method"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.submitted = Counter(
            "takovm_shim_jobs_submitted",
            "Jobs created through this shim (idempotent replays not counted)",
            ["job_type"],
            registry=self.registry,
        )
        self.finished = Counter(
            "takovm_shim_jobs_finished",
            "Jobs that reached a terminal status (kubernetes backend: those this shim submitted)",
            ["status", "job_type"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "takovm_shim_webhook_deliveries",
            "Completion webhook attempts by outcome (local backend; in a cluster the operator sends them)",
            ["outcome"],
            registry=self.registry,
        )
        self.registry.register(_GaugeCollector(self))

    def job_type_label(self, job_type: str) -> str:
        if job_type in self._job_types:
            return job_type
        if len(self._job_types) >= MAX_JOB_TYPES:
            return OTHER
        self._job_types.add(job_type)
        return job_type

    def request(self, route: str | None, method: str, status: int, seconds: float) -> None:
        route_label = route or UNMATCHED_ROUTE
        method_label = method if method in METHODS else OTHER
        self.requests.labels(route_label, method_label, str(status)).inc()
        self.request_seconds.labels(route_label, method_label).observe(seconds)

    def job_submitted(self, job_type: str) -> None:
        self.submitted.labels(self.job_type_label(job_type)).inc()

    def job_finished(self, status: str, job_type: str) -> None:
        self.finished.labels(status, self.job_type_label(job_type)).inc()

    def webhook_attempt(self, state: str) -> None:
        self.webhooks.labels(attempt_outcome(state)).inc()

    def refresh(self) -> None:
        """Read the gauges now (on the event loop, where the backend's state lives)."""
        self.snapshot = (self.gauges(), self.streams_open())

    def render(self) -> bytes:
        """The text format of the last ``refresh``; safe in a worker thread (about 20 ms for 1,000
        lines, so ``GET /metrics`` renders off the event loop)."""
        return bytes(generate_latest(self.registry))

    def exposition(self) -> bytes:
        self.refresh()
        return self.render()
