"""Prometheus metrics of the pipeline, one registry per process (exposed on /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WEBHOOK_REQUESTS = Counter(
    "pipeline_webhook_requests",
    "Webhook requests by outcome (accepted, rejected, unavailable) and reason.",
    ["outcome", "reason"],
)
BATCH_SIZE = Histogram(
    "pipeline_ingest_batch_size_events",
    "Events per broker message (group commit).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
ENQUEUE_SECONDS = Histogram(
    "pipeline_ingest_enqueue_seconds",
    "Time from a request's arrival at the batcher to its batch being accepted by the broker.",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
IN_FLIGHT = Gauge(
    "pipeline_webhook_in_flight_events",
    "Events accepted by the receiver and waiting for the broker.",
)
BROKER_ERRORS = Counter(
    "pipeline_ingest_broker_errors",
    "Batches the broker did not accept (their requests were answered 503).",
)
