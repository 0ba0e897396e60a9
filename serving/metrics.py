"""The server's Prometheus metrics, in a registry of its own (one per app, so tests can run several).

With --workers N the workers' metrics are one set: prometheus_client's multiprocess mode, in which every process
writes its values to files in PROMETHEUS_MULTIPROC_DIR and /metrics, in whichever worker answers it, sums them.
prometheus_client chooses that mode when it is first imported, so `shared_between_processes` is entered before.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@contextlib.contextmanager
def shared_between_processes() -> Iterator[str]:
    """Within it, the metrics of this process and of the ones it forks are one set, kept in a temporary folder."""
    values = sys.modules.get("prometheus_client.values")  # imported already (main() called in-process):
    chosen = values and values.ValueClass  # the value class it chose from the environment then is replaced
    with tempfile.TemporaryDirectory(prefix="albert-serve-metrics-") as directory:
        os.environ[MULTIPROCESS_DIR] = directory
        if values:
            values.ValueClass = values.MultiProcessValue()
        try:
            yield directory
        finally:
            del os.environ[MULTIPROCESS_DIR]
            if values:
                values.ValueClass = chosen


class Metrics:
    """The server's Prometheus metrics, in a registry of their own."""
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
            registry=self.registry, multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "albert_serve_requests_in_flight", "Requests received and not yet answered", ["model"],
            registry=self.registry, multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "albert_serve_batch_size", "Model windows run together in one batch (across requests)", ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.wide_batches = Counter(
            "albert_serve_wide_batches", "Batches run on every CPU's threads, no other worker having requests "
            "(--workers without --threads)", ["model"], registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "albert_serve_batch_seconds", "Time to run one batch on the model", ["model"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "albert_serve_request_seconds", "Request latency, arrival to answer", ["model", "route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )

    def text(self) -> bytes:
        """The Prometheus text of these metrics, every worker's summed when the workers share them."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        directory = os.environ.get(MULTIPROCESS_DIR)
        if directory is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, directory)
        return generate_latest(registry)
