"""Prometheus metrics of one server process, in a registry of its own (``GET /metrics``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class ServerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("bertcls_requests", "HTTP requests by endpoint and status", ["endpoint", "code"],
                                registry=r)  # fmt: skip
        self.errors = Counter("bertcls_errors", "HTTP responses of status 400 or more, by status", ["code"], registry=r)
        self.latency = Histogram("bertcls_request_seconds", "Request latency by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.batch_texts = Histogram("bertcls_batch_texts", "Texts per model batch", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("bertcls_batch_seconds", "Model time per batch", buckets=LATENCY_BUCKETS,
                                       registry=r)  # fmt: skip
        self.texts = Counter("bertcls_texts", "Texts predicted (texts/s: rate of this counter)", registry=r)
        self.queue_texts = Gauge("bertcls_queue_texts", "Texts waiting for a batch", registry=r)
        self.reloads = Counter("bertcls_reloads", "Model reloads by outcome", ["outcome"], registry=r)

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if code >= 400:
            self.errors.labels(str(code)).inc()

    def observe_batch(self, texts: int, seconds: float) -> None:
        self.batch_texts.observe(texts)
        self.batch_seconds.observe(seconds)
        self.texts.inc(texts)

    def render(self) -> bytes:
        return generate_latest(self.registry)
