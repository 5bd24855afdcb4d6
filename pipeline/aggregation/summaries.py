"""Publish each finished roll-up window as a JSON summary (PIPELINE_SUMMARY_CACHE/_TOPIC).

A window is finished once its end is ``settle_s`` in the past (the reorder window plus a
margin, so late arrivals and gap declarations are in). Rows are claimed FOR UPDATE SKIP LOCKED
and marked published in the transaction that claimed them, after the publish succeeded: a crash
between the two publishes a window again (at least once; consumers key on cache, topic and
window_start). A window recomputed with different values later is published again. Windows that
ended longer ago than ``horizon_s`` are not published, so enabling summaries on an old database
does not flood the topic with history.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

from pipeline.aggregation.stats import round_ms
from pipeline.config import Settings

logger = logging.getLogger(__name__)

Publish = Callable[[str], None]
"""Sends one summary text to the summary topic; raises on failure."""

HORIZON_S = 3600.0
BATCH = 500

_CLAIM = """
SELECT cache, topic, window_s, window_start, events, bytes, first_seq, last_seq, out_of_order,
    resets, duplicates, gaps, lost, distinct_tokens,
    publish_latency_p50_ms, publish_latency_p95_ms, publish_latency_p99_ms,
    receive_latency_p50_ms, receive_latency_p95_ms, receive_latency_p99_ms
FROM rollups
WHERE published_at IS NULL AND window_s = :window_s
    AND window_start >= :oldest AND window_start <= :newest
ORDER BY window_start, cache, topic
LIMIT :n
FOR UPDATE SKIP LOCKED
"""


_MARK = """
UPDATE rollups SET published_at = now()
WHERE cache = :cache AND topic = :topic AND window_s = :window_s AND window_start = :start
"""


def summary_json(row: Any) -> str:
    """The JSON text published for one roll-up row."""
    return json.dumps(
        {
            "cache": row.cache,
            "topic": row.topic,
            "window_start": row.window_start.astimezone(UTC).isoformat(),
            "window_s": row.window_s,
            "events": row.events,
            "bytes": row.bytes,
            "first_seq": row.first_seq,
            "last_seq": row.last_seq,
            "out_of_order": row.out_of_order,
            "resets": row.resets,
            "duplicates": row.duplicates,
            "gaps": row.gaps,
            "lost": row.lost,
            "distinct_tokens": row.distinct_tokens,
            "publish_latency_ms": _percentiles(row, "publish"),
            "receive_latency_ms": _percentiles(row, "receive"),
        },
        separators=(",", ":"),
    )


def _percentiles(row: Any, kind: str) -> dict[str, float | None]:
    return {p: round_ms(getattr(row, f"{kind}_latency_{p}_ms")) for p in ("p50", "p95", "p99")}


def publish_finished(
    engine: Engine,
    window_s: int,
    publish: Publish,
    *,
    settle_s: float,
    now: datetime | None = None,
    horizon_s: float = HORIZON_S,
    batch: int = BATCH,
) -> int:
    """Publish up to ``batch`` finished, unpublished windows; return how many were sent."""
    now = now or datetime.now(UTC)
    params = {
        "window_s": window_s,
        "oldest": now - timedelta(seconds=horizon_s + window_s),
        "newest": now - timedelta(seconds=settle_s + window_s),
        "n": batch,
    }
    sent = 0
    with engine.connect() as conn:
        try:
            for row in conn.execute(text(_CLAIM), params).all():
                publish(summary_json(row))
                conn.execute(text(_MARK), {**row._asdict(), "start": row.window_start})
                sent += 1
        finally:
            conn.commit()  # keep the marks of what was sent, even if a later publish failed
    if sent:
        logger.info("summaries published windows=%d window_s=%d", sent, window_s)
    return sent


def momento_publisher(settings: Settings) -> tuple[Publish, Callable[[], None]] | None:
    """A Publish to the configured summary topic and its close(), or None if none is configured."""
    cache, topic = settings.pipeline_summary_cache, settings.pipeline_summary_topic
    if not cache or not topic:
        return None
    from pipeline.outbound import momento_client

    client = momento_client.topic_client(settings, timeout=momento_client.PUBLISH_TIMEOUT)

    def publish(value: str) -> None:
        momento_client.publish(client, cache, topic, value)

    return publish, client.close
