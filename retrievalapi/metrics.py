"""Prometheus metrics, one registry per app (several apps in one process, e.g. tests, stay separate)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("api_requests_total", "HTTP requests by route template, model and status",
                                ["method", "route", "model", "status"], registry=r)
        self.latency = Histogram("api_request_duration_seconds", "Request latency by route template and model",
                                 ["method", "route", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("api_batch_size", "Images per forward pass", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("api_batch_duration_seconds", "Forward + search time per batch", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("api_queue_wait_seconds", "Time an image waited for its forward pass",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("api_queue_depth", "Images waiting for a forward pass", ["model"], registry=r)
        self.inflight = Gauge("api_inflight_searches", "Image searches in progress", registry=r)
        self.rejected = Counter("api_rejected_total", "Requests refused to protect the service",
                                ["model", "reason"], registry=r)
        self.catalog_writes = Counter("api_catalog_writes_total", "Products added, updated or deleted", registry=r)
        self.keep_warm_runs = Counter("api_keep_warm_runs_total",
                                      "Searches re-run between shoppers' searches (KEEP_WARM_MS)", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
