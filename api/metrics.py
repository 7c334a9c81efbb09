"""Prometheus metrics with a registry per app instance (never the process-global one), so two
apps in one process (tests, workers) do not share or collide on counters."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The service's instruments.

    - `dinoserve_requests_total{method, route, status}`: route is the template (`/images/{id}`),
      or "unmatched", so cardinality stays bounded.
    - `dinoserve_request_seconds{method, route}`: latency histogram.
    - `dinoserve_batch_size{op}`: images per engine call (embed / attention).
    - `dinoserve_queue_depth{op}`: images waiting for a batch.
    - `dinoserve_model_info{name, version, engine, engine_variant, engine_setting, embed_dim}`:
      the engine as resolved (DINOSERVE_ENGINE=auto → the bench record's choice).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "dinoserve_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "dinoserve_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "dinoserve_batch_size",
            "images per engine call",
            ["op"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "dinoserve_queue_depth", "images waiting for a batch", ["op"], registry=r
        )
        self.model = Info("dinoserve_model", "the served model package", registry=r)

    def watch_queue(self, op: str, depth: Callable[[], int]) -> None:
        """Report `depth()` as the queue depth of `op` at every scrape."""
        self.queue_depth.labels(op).set_function(depth)

    def batch_observer(self, op: str) -> Callable[[int], None]:
        """A callback recording batch sizes of `op` (for api.serving.Batcher's on_batch)."""
        hist = self.batch_size.labels(op)
        return hist.observe

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts requests and times them by route template; a pure ASGI middleware, so it sees the
    final status of every response, including errors raised past the exception handlers."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            # Any token is a valid HTTP method: unknown ones share one label (bounded series).
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
