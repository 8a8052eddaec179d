"""The server's Prometheus metrics, in a registry of its own (several apps can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mixerlab_requests_total", "HTTP requests by path and status", ["path", "status"],
                                registry=r)
        self.latency = Histogram("mixerlab_request_seconds", "request latency", ["path"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch_size = Histogram("mixerlab_batch_size", "images per model call", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_seconds = Histogram("mixerlab_batch_seconds", "model time per batch", registry=r)
        self.queue_depth = Gauge("mixerlab_queue_depth", "images waiting for the model", registry=r)
        self.rejected = Counter("mixerlab_rejected_total", "requests refused, by reason", ["reason"], registry=r)

    def observe_request(self, path: str, status: int, seconds: float, depth: int) -> None:
        path = path if path in ("/v1/predict", "/v1/predict/batch", "/healthz", "/readyz", "/v1/model", "/metrics",
                                "/") else "other"  # no unbounded label values from arbitrary URLs
        self.requests.labels(path=path, status=str(status)).inc()
        self.latency.labels(path=path).observe(seconds)
        self.queue_depth.set(depth)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
