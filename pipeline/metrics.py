"""Prometheus metrics of the pipeline, one registry per process (exposed on /metrics).

The counters and histograms are updated in-process by the receiver. `DatabaseCollector` reads
the sequencing and roll-up state from Postgres on each scrape instead, since many workers write
it and only the database sees all of it.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.config import Settings

logger = logging.getLogger(__name__)

WEBHOOK_REQUESTS = Counter(
    "pipeline_webhook_requests",
    "Webhook requests by outcome (accepted, rejected, unavailable) and reason.",
    ["outcome", "reason"],
)
CHANGE_REQUESTS = Counter(
    "pipeline_change_requests",
    "POST /changes/{source} requests by outcome (accepted, rejected, unavailable) and reason.",
    ["outcome", "reason"],
)
CHANGE_RECORDS = Counter(
    "pipeline_change_records", "Change records accepted (durable in the broker)."
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
BATCH_WAIT = Gauge(
    "pipeline_ingest_batch_wait_seconds",
    "How long the group commit collects a batch now (longer while the ingest queue is behind).",
)
IN_FLIGHT = Gauge(
    "pipeline_webhook_in_flight_events",
    "Events accepted by the receiver and waiting for the broker.",
)
BROKER_ERRORS = Counter(
    "pipeline_ingest_broker_errors",
    "Batches the broker did not accept (their requests were answered 503).",
)


# -- read from Postgres at scrape time ----------------------------------------------------------

_TOPIC_SQL = """
SELECT cache, topic,
    coalesce((state -> 'counters' ->> 'received')::bigint, 0) AS received,
    coalesce((state -> 'counters' ->> 'lost')::bigint, 0) AS lost,
    coalesce((state -> 'counters' ->> 'resets')::bigint, 0) AS resets,
    coalesce((state -> 'counters' ->> 'late')::bigint, 0) AS late,
    coalesce((state -> 'counters' ->> 'duplicates')::bigint, 0) AS duplicates,
    coalesce(jsonb_array_length(state -> 'current' -> 'pending'), 0)
        + coalesce(jsonb_array_length(state -> 'previous' -> 'pending'), 0) AS open_gaps,
    extract(epoch FROM now() - newest_received_at)::float8 AS age_s
FROM topic_cursors
"""
_LAG_SQL = """
SELECT greatest(0, extract(epoch FROM
    (SELECT max(received_at) FROM events) - (SELECT max(newest_received_at) FROM topic_cursors)
))::float8 AS lag_s
"""
_ROLLUP_SQL = """
SELECT w.window_s, extract(epoch FROM now() - min(w.updated_at))::float8 AS age_s,
    greatest(0, (SELECT coalesce(max(id), 0) FROM events)
        - max(w.scanned_id) FILTER (WHERE w.source = 'events')) AS backlog
FROM rollup_watermarks w
GROUP BY w.window_s
"""
_TOPIC_METRICS = (
    ("received", "counter", "Deliveries sequenced, duplicates included."),
    ("lost", "gauge", "Messages declared lost (never received), net of late recoveries."),
    ("resets", "counter", "Sequence resets inferred (numbering restarted)."),
    ("late", "counter", "Messages received out of order (a higher number came first)."),
    ("duplicates", "counter", "Deliveries of a message already received."),
    ("open_gaps", "gauge", "Gaps waiting for the reorder window before they count as lost."),
)


class DatabaseCollector(Collector):
    """Per-topic sequencing totals, sequencer lag and roll-up age, queried from Postgres.

    Every query is one indexed lookup or a scan of topic_cursors (one row per topic), under a
    2 s statement timeout. A scrape that cannot reach the database reports
    ``pipeline_db_metrics_up 0`` instead of failing.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("pipeline_db_metrics_up", "1 if the database answered the scrape.")
        try:
            families = self._families()
        except Exception as exc:  # a scrape must answer even when Postgres is down
            logger.warning("database metrics scrape failed error=%r", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from families

    def _families(self) -> list[Metric]:
        from sqlalchemy import text

        from pipeline.db import get_engine

        with get_engine(self.settings).connect() as conn:
            conn.execute(text("SET LOCAL statement_timeout = '2s'"))
            topics = conn.execute(text(_TOPIC_SQL)).all()
            lag_s = conn.execute(text(_LAG_SQL)).scalar()
            rollups = conn.execute(text(_ROLLUP_SQL)).all()
            outbox = conn.execute(text(_OUTBOX_SQL)).one()
            dead = conn.execute(text(_DEAD_LETTER_SQL)).all()
            leases = conn.execute(text(_LEASE_SQL)).all()
            conn.rollback()
        labels = ["cache", "topic"]
        families: list[Metric] = []
        for name, kind, doc in _TOPIC_METRICS:
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                f"pipeline_topic_{name}", doc, labels=labels
            )
            for row in topics:
                family.add_metric([row.cache, row.topic], float(getattr(row, name)))
            families.append(family)
        age = GaugeMetricFamily(
            "pipeline_topic_last_received_age_seconds",
            "Seconds since the newest delivery of the topic was received.",
            labels=labels,
        )
        for row in topics:
            if row.age_s is not None:
                age.add_metric([row.cache, row.topic], row.age_s)
        lag = GaugeMetricFamily(
            "pipeline_sequencer_lag_seconds",
            "Newest stored event's received_at minus the newest sequenced one (0 when caught up).",
        )
        lag.add_metric([], float(lag_s or 0.0))
        rollup_age = GaugeMetricFamily(
            "pipeline_rollup_age_seconds",
            "Seconds since the last roll-up run.",
            labels=["window_s"],
        )
        backlog = GaugeMetricFamily(
            "pipeline_rollup_backlog_events",
            "Event ids stored but not yet read by roll-ups.",
            labels=["window_s"],
        )
        for row in rollups:
            rollup_age.add_metric([str(row.window_s)], row.age_s)
            backlog.add_metric([str(row.window_s)], float(row.backlog or 0))
        pending = GaugeMetricFamily(
            "pipeline_outbox_pending_messages", "Outbox rows waiting to be sent to Momento."
        )
        pending.add_metric([], float(outbox.pending))
        oldest = GaugeMetricFamily(
            "pipeline_outbox_oldest_pending_age_seconds",
            "Age of the oldest outbox row still waiting (0 when none waits).",
        )
        oldest.add_metric([], float(outbox.oldest_s or 0.0))
        letters = GaugeMetricFamily(
            "pipeline_dead_letters", "Unresolved dead letters, by kind.", labels=["kind"]
        )
        for row in dead:
            letters.add_metric([row.kind], float(row.n))
        unheld = GaugeMetricFamily(
            "pipeline_subscription_unheld_seconds",
            "Seconds a subscribed topic has had no live listener (0 while one holds it).",
            labels=labels,
        )
        for row in leases:
            unheld.add_metric([row.cache, row.topic], float(row.unheld_s or 0.0))
        return [*families, age, lag, rollup_age, backlog, pending, oldest, letters, unheld]


_OUTBOX_SQL = """
SELECT count(*) AS pending, extract(epoch FROM now() - min(created_at)) AS oldest_s
FROM outbox WHERE status = 'pending'
"""
_DEAD_LETTER_SQL = """
SELECT kind, count(*) AS n FROM dead_letters WHERE resolved_at IS NULL GROUP BY kind
"""

_LEASE_SQL = """
SELECT cache, topic,
    CASE WHEN holder IS NOT NULL AND expires_at > now() THEN 0
        ELSE extract(epoch FROM now() - coalesce(expires_at, updated_at)) END::float8 AS unheld_s
FROM subscription_leases
"""

_registered: weakref.WeakKeyDictionary[CollectorRegistry, DatabaseCollector] = (
    weakref.WeakKeyDictionary()
)
"""By registry object, not ``id()``: a registry that was freed may hand its id to a new one."""


def register_db_collector(
    settings: Settings, registry: CollectorRegistry = REGISTRY
) -> DatabaseCollector:
    """Register the database collector on ``registry`` (once per registry); return it."""
    existing = _registered.get(registry)
    if existing is not None:
        return existing
    collector = DatabaseCollector(settings)
    registry.register(collector)
    _registered[registry] = collector
    return collector
