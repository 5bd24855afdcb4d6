"""Retention: delete raw rows older than PIPELINE_RETENTION_DAYS; roll-ups are kept.

Events and duplicate deliveries are deleted only up to the roll-up watermark's settled id, so a
row is never deleted before it has been rolled up (and roll-ups never recompute a window that
retention has started to empty: see ``keep_after`` in ``aggregation.rollups``). ingest_batches rows
only guard against redelivered broker messages, which never outlive the visibility timeout, so
they follow the same cutoff. Deletes run in chunks of ids, each its own short transaction, so
a large first cleanup neither bloats one transaction nor holds locks for long. Lost ranges are
kept: they are small and they are what `pipeline stats` lists.

An expired event is also kept while a workflow still needs it: an ordered route's driver has not
reached it yet (it is ahead of a route cursor of its topic, or an ordered route matches its topic
and has no cursor there yet: ``ordered`` names those routes), a run of it is in flight
(``running``), or a workflow dead letter for it is unresolved (``pipeline replay`` re-runs it
from the stored event). Once that is over, the next run deletes it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

logger = logging.getLogger(__name__)

CHUNK = 10_000

_DELETE = {
    "events": """
DELETE FROM events WHERE id IN (
    SELECT e.id FROM events e
    WHERE e.received_at < :cutoff AND e.id <= :settled
      AND NOT EXISTS (
        SELECT 1 FROM route_cursors c
        WHERE c.cache = e.cache AND c.topic = e.topic
          AND (e.epoch, e.topic_sequence_number, e.id) > (c.epoch, c.seq, c.event_id))
      AND NOT EXISTS (
        SELECT 1 FROM unnest(CAST(:routes AS text[]), CAST(:cache_res AS text[]),
                             CAST(:topic_res AS text[])) AS r(route, cache_re, topic_re)
        WHERE e.cache ~ r.cache_re AND e.topic ~ r.topic_re
          AND NOT EXISTS (SELECT 1 FROM route_cursors c
                          WHERE c.route = r.route AND c.cache = e.cache AND c.topic = e.topic))
      AND e.id NOT IN (SELECT event_id FROM workflow_runs WHERE status = 'running')
      AND e.id::text NOT IN (
        SELECT payload ->> 'event_id' FROM dead_letters
        WHERE kind = 'workflow' AND resolved_at IS NULL AND payload ->> 'event_id' IS NOT NULL)
    LIMIT :n)""",
    "duplicates": """
DELETE FROM duplicate_deliveries WHERE id IN (
    SELECT id FROM duplicate_deliveries
    WHERE received_at < :cutoff AND id <= :settled LIMIT :n)""",
    "batches": """
DELETE FROM ingest_batches WHERE task_id IN (
    SELECT task_id FROM ingest_batches WHERE created_at < :cutoff LIMIT :n)""",
}


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """Rows deleted by one retention run, per table."""

    cutoff: datetime
    events: int = 0
    duplicates: int = 0
    batches: int = 0


def retention_cutoff(retention_days: float, now: datetime | None = None) -> datetime:
    """Rows received before this moment are expired."""
    return (now or datetime.now(UTC)) - timedelta(days=retention_days)


def delete_expired(
    engine: Engine,
    retention_days: float,
    window_s: int,
    *,
    ordered: Iterable[tuple[str, str, str]] = (),
    now: datetime | None = None,
    chunk: int = CHUNK,
) -> RetentionReport:
    """Delete expired raw rows (already rolled up for ``window_s``) in chunks; return counts.

    ``ordered`` lists the ordered routes as (name, cache regex, topic regex): their globs as
    ``pipeline.workflows.templates.glob_regex`` writes them for SQL.
    """
    cutoff = retention_cutoff(retention_days, now)
    routes = list(ordered)
    patterns = {
        "routes": [name for name, _, _ in routes],
        "cache_res": [cache_re for _, cache_re, _ in routes],
        "topic_res": [topic_re for _, _, topic_re in routes],
    }
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT source, settled_id FROM rollup_watermarks WHERE window_s = :w"),
            {"w": window_s},
        )
        settled: dict[str, int] = {row.source: row.settled_id for row in rows}
        conn.commit()
        counts: dict[str, int] = {}
        for name, statement in _DELETE.items():
            params = {"cutoff": cutoff, "settled": settled.get(name, 0), "n": chunk, **patterns}
            total = 0
            while True:
                deleted = conn.execute(text(statement), params).rowcount
                conn.commit()
                total += deleted
                if deleted < chunk:
                    break
            counts[name] = total
    report = RetentionReport(cutoff, **counts)
    logger.info(
        "retention cutoff=%s events=%d duplicates=%d batches=%d",
        cutoff.isoformat(),
        report.events,
        report.duplicates,
        report.batches,
    )
    return report
