"""The server's Prometheus metrics, in a registry of its own (one per app, so tests can run several)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The server's Prometheus metrics, in a registry of their own."""
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "albert_serve_requests", "Requests answered, by model, route and HTTP status", ["model", "route", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "albert_serve_errors", "Requests answered with an error, by model and HTTP status", ["model", "status"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "albert_serve_queue_depth", "Requests taken and not yet answered, per model", ["model"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "albert_serve_requests_in_flight", "Requests received and not yet answered", ["model"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "albert_serve_batch_size", "Model windows run together in one batch (across requests)", ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "albert_serve_batch_seconds", "Time to run one batch on the model", ["model"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "albert_serve_request_seconds", "Request latency, arrival to answer", ["model", "route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
