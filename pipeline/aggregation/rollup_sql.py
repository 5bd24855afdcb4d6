"""The SQL of pipeline.aggregation: mark touched windows, recompute a batch of windows.

A window is a ``bucket`` number, ``floor(epoch seconds / window_s)``, starting at
``to_timestamp(bucket * window_s)``. Common parameters: ``window_s`` and ``window_ms``. The
session's temp table ``rollup_dirty`` collects windows to recompute; ``rollup_batch`` holds the
batch being recomputed, numbered by ``k`` (grouping by an integer sorts much faster than by
cache and topic).
"""

from __future__ import annotations

CREATE_DIRTY = (
    "CREATE TEMP TABLE IF NOT EXISTS rollup_dirty (cache varchar(255), topic varchar(255),"
    " bucket bigint, PRIMARY KEY (bucket, cache, topic))"
)
CREATE_BATCH = (
    "CREATE TEMP TABLE IF NOT EXISTS rollup_batch (k integer PRIMARY KEY, cache varchar(255),"
    " topic varchar(255), bucket bigint)"
)

CREATE_TOUCHED = (
    "CREATE TEMP TABLE IF NOT EXISTS rollup_touched (cache varchar(255), topic varchar(255),"
    " PRIMARY KEY (cache, topic))"
)

_BUCKET_OF = {
    "duplicates": "floor(extract(epoch FROM received_at) / :window_s)::bigint",
    "lost": "floor(extract(epoch FROM declared_at) / :window_s)::bigint",
}
_TABLE = {"duplicates": "duplicate_deliveries", "lost": "lost_ranges"}

MARK_SQL = {
    source: f"""
INSERT INTO rollup_dirty (cache, topic, bucket)
SELECT DISTINCT cache, topic, {bucket} FROM {_TABLE[source]}
WHERE id > :lo AND id <= :hi
ON CONFLICT DO NOTHING
"""
    for source, bucket in _BUCKET_OF.items()
}
MARK_SQL["events"] = """
WITH touched AS MATERIALIZED (
    SELECT cache, topic,
        CASE WHEN event_timestamp >= :min_ms AND event_timestamp < :max_ms
            THEN event_timestamp / :window_ms END AS bucket,
        bool_or(arrival = 'late') AS late, count(*) AS n
    FROM events
    WHERE id > :lo AND id <= :hi AND event_timestamp IS NOT NULL
    GROUP BY 1, 2, 3
), windows AS (
    INSERT INTO rollup_dirty (cache, topic, bucket)
    SELECT cache, topic, bucket FROM touched WHERE bucket IS NOT NULL
    ON CONFLICT DO NOTHING
), late AS (
    INSERT INTO rollup_touched (cache, topic)
    SELECT DISTINCT cache, topic FROM touched WHERE late
    ON CONFLICT DO NOTHING
)
SELECT coalesce(sum(n), 0) FROM touched WHERE bucket IS NULL
"""
"""Per source: mark the windows of the rows with ids in (lo, hi]; events also note the topics
that got late arrivals (rollup_touched), for MARK_UNLOST_SQL.

Events with an ``event_timestamp`` outside [min_ms, max_ms) mark no window (one such row would
otherwise fail every run, ``to_timestamp`` out of range, for all topics); the events statement
returns how many it skipped.
"""

MARK_UNLOST_SQL = """
WITH declared AS (
    SELECT l.cache, l.topic, floor(extract(epoch FROM l.declared_at) / :window_s)::bigint AS bucket,
        sum(l.last_seq - l.first_seq + 1) AS lost
    FROM lost_ranges l JOIN rollup_touched t ON l.cache = t.cache AND l.topic = t.topic
    GROUP BY 1, 2, 3
), rolled AS (
    SELECT r.cache, r.topic,
        floor(extract(epoch FROM r.window_start) / :window_s)::bigint AS bucket, r.lost
    FROM rollups r JOIN rollup_touched t ON r.cache = t.cache AND r.topic = t.topic
    WHERE r.window_s = :window_s AND r.lost > 0
)
INSERT INTO rollup_dirty (cache, topic, bucket)
SELECT cache, topic, bucket FROM declared FULL JOIN rolled USING (cache, topic, bucket)
WHERE declared.lost IS DISTINCT FROM rolled.lost
ON CONFLICT DO NOTHING
"""
"""Mark windows whose lost count changed because a late event un-declared a lost number.

The sequencer deletes (or splits) the range of a number that arrives after it was declared lost;
a deletion leaves no new row to find by id, so the windows with lost messages of the topics in
rollup_touched (those with new late events) are compared with lost_ranges.
"""

TAKE_BATCH_SQL = """
WITH taken AS (
    DELETE FROM rollup_dirty WHERE (bucket, cache, topic) IN
        (SELECT bucket, cache, topic FROM rollup_dirty ORDER BY 1, 2, 3 LIMIT :n)
    RETURNING cache, topic, bucket
)
SELECT cache, topic, bucket FROM taken ORDER BY bucket, cache, topic
"""
"""Remove and return the next batch of marked windows, oldest first."""

FILL_BATCH_SQL = """
INSERT INTO rollup_batch (k, cache, topic, bucket)
SELECT ordinality, cache, topic, bucket
FROM unnest(CAST(:caches AS text[]), CAST(:topics AS text[]), CAST(:buckets AS bigint[]))
    WITH ORDINALITY AS w (cache, topic, bucket, ordinality)
"""

# seek: per window an index range scan (OFFSET 0 keeps the planner from flattening the lateral
# subquery into a join it would misestimate); scan: one hash join over the batch's time slice.
_EVENTS_FROM = {
    False: """CROSS JOIN LATERAL (
        SELECT e.text, e.event_timestamp, e.topic_sequence_number, e.arrival, e.token_id,
            e.publish_timestamp, e.received_at
        FROM events e
        WHERE e.cache = b.cache AND e.topic = b.topic
            AND e.event_timestamp >= b.bucket * :window_ms
            AND e.event_timestamp < (b.bucket + 1) * :window_ms
        OFFSET 0) AS e""",
    True: """JOIN events e ON e.cache = b.cache AND e.topic = b.topic
        AND e.event_timestamp / :window_ms = b.bucket
        AND e.event_timestamp >= :low_ms AND e.event_timestamp < :high_ms""",
}

_VALUES = (
    "events",
    "bytes",
    "first_seq",
    "last_seq",
    "out_of_order",
    "resets",
    "duplicates",
    "gaps",
    "lost",
    "distinct_tokens",
    "publish_latency_p50_ms",
    "publish_latency_p95_ms",
    "publish_latency_p99_ms",
    "receive_latency_p50_ms",
    "receive_latency_p95_ms",
    "receive_latency_p99_ms",
)


def recompute_sql(scan: bool) -> str:
    """Recompute every window of rollup_batch; unchanged rows are left alone (not rewritten)."""
    return f"""
WITH ev AS (
    SELECT b.k,
        count(*) AS events,
        sum(octet_length(e.text)) AS bytes,
        (min(ARRAY[e.event_timestamp, e.topic_sequence_number]))[2] AS first_seq,
        (max(ARRAY[e.event_timestamp, e.topic_sequence_number]))[2] AS last_seq,
        count(*) FILTER (WHERE e.arrival = 'late') AS out_of_order,
        count(*) FILTER (WHERE e.arrival = 'reset') AS resets,
        count(DISTINCT nullif(e.token_id, '')) AS distinct_tokens,
        percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
            (ORDER BY (e.publish_timestamp - e.event_timestamp)::float8) AS publish_ms,
        percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
            (ORDER BY date_part('epoch', e.received_at) * 1000 - e.event_timestamp) AS receive_ms
    FROM rollup_batch b
    {_EVENTS_FROM[scan]}
    GROUP BY b.k
), dup AS (
    SELECT b.k, count(*) AS duplicates
    FROM rollup_batch b
    JOIN duplicate_deliveries x ON x.cache = b.cache AND x.topic = b.topic
        AND x.received_at >= to_timestamp(b.bucket * :window_s)
        AND x.received_at < to_timestamp((b.bucket + 1) * :window_s)
    GROUP BY b.k
), lost AS (
    SELECT b.k, count(*) AS gaps, sum(l.last_seq - l.first_seq + 1) AS lost
    FROM rollup_batch b
    JOIN lost_ranges l ON l.cache = b.cache AND l.topic = b.topic
        AND l.declared_at >= to_timestamp(b.bucket * :window_s)
        AND l.declared_at < to_timestamp((b.bucket + 1) * :window_s)
    GROUP BY b.k
)
INSERT INTO rollups AS r (cache, topic, window_s, window_start, {", ".join(_VALUES)}, updated_at)
SELECT b.cache, b.topic, :window_s, to_timestamp(b.bucket * :window_s),
    coalesce(ev.events, 0), coalesce(ev.bytes, 0), ev.first_seq, ev.last_seq,
    coalesce(ev.out_of_order, 0), coalesce(ev.resets, 0), coalesce(dup.duplicates, 0),
    coalesce(lost.gaps, 0), coalesce(lost.lost, 0), coalesce(ev.distinct_tokens, 0),
    ev.publish_ms[1], ev.publish_ms[2], ev.publish_ms[3],
    ev.receive_ms[1], ev.receive_ms[2], ev.receive_ms[3],
    now()
FROM rollup_batch b
LEFT JOIN ev ON ev.k = b.k
LEFT JOIN dup ON dup.k = b.k
LEFT JOIN lost ON lost.k = b.k
ON CONFLICT (cache, topic, window_s, window_start) DO UPDATE SET
    {", ".join(f"{name} = excluded.{name}" for name in _VALUES)},
    updated_at = excluded.updated_at, published_at = NULL
WHERE ({", ".join(f"r.{name}" for name in _VALUES)})
    IS DISTINCT FROM ({", ".join(f"excluded.{name}" for name in _VALUES)})
"""
