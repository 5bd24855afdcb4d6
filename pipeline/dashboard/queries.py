"""What the pages show, read from Postgres: per-topic health, series, events, traces, dead letters.

Totals (events, lost, resets, duplicates, out of order, latency) come from
`pipeline.aggregation.stats.gather_stats`, the same code as `pipeline stats`, so the page and
the command agree. The rest reads the live tables each page already has indexes for: the
sequencer's topic_cursors (last number and page, open gaps), events received in the last few
seconds (rate), route_cursors (ordered-route lag), pending outbox rows and dead letters.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

from pipeline.aggregation.stats import LostRange, TopicStats, gather_stats

RATE_WINDOW_S = 10
QUIET_AFTER_S = 300.0
OUTBOX_STUCK_S = 60.0

_LIVE_SQL = """
SELECT c.cache, c.topic,
    (c.state -> 'current' ->> 'highest')::bigint AS last_seq,
    (c.state -> 'current' ->> 'page')::bigint AS page,
    (c.state -> 'current' ->> 'number')::int AS epoch,
    coalesce(jsonb_array_length(c.state -> 'current' -> 'pending'), 0)
        + coalesce(jsonb_array_length(c.state -> 'previous' -> 'pending'), 0) AS open_gaps,
    extract(epoch FROM now() - c.newest_received_at)::float8 AS quiet_s,
    (SELECT count(*) FROM events e WHERE e.cache = c.cache AND e.topic = c.topic
        AND e.received_at > now() - make_interval(secs => :rate_s)) AS recent
FROM topic_cursors c
"""
_ROUTE_LAG_SQL = """
SELECT r.cache, r.topic, max(CASE
    WHEN r.epoch = (c.state -> 'current' ->> 'number')::int
        THEN greatest(0, (c.state -> 'current' ->> 'highest')::bigint - r.seq)
    ELSE (c.state -> 'current' ->> 'highest')::bigint END) AS lag
FROM route_cursors r JOIN topic_cursors c ON c.cache = r.cache AND c.topic = r.topic
GROUP BY r.cache, r.topic
"""
_OUTBOX_SQL = """
SELECT e.cache, e.topic, count(*) AS pending,
    extract(epoch FROM now() - min(o.created_at))::float8 AS oldest_s
FROM outbox o JOIN events e ON e.id = o.event_id
WHERE o.status = 'pending'
GROUP BY e.cache, e.topic
"""
_DEAD_BY_TOPIC_SQL = """
SELECT e.cache, e.topic, count(*) AS n
FROM dead_letters d JOIN events e ON e.id = (d.payload ->> 'event_id')::bigint
WHERE d.resolved_at IS NULL AND d.payload ? 'event_id'
GROUP BY e.cache, e.topic
"""


@dataclass(frozen=True, slots=True)
class TopicRow:
    """One line of the overview: totals plus what is happening now."""

    stats: TopicStats
    events_per_s: float = 0.0
    last_seq: int | None = None
    page: int | None = None
    open_gaps: int = 0
    quiet_s: float | None = None
    route_lag: int | None = None
    outbox_pending: int = 0
    outbox_oldest_s: float | None = None
    dead_letters: int = 0

    @property
    def troubles(self) -> list[str]:
        """Why this topic needs a look (empty: it is fine)."""
        found = []
        if self.stats.lost:
            found.append(f"{self.stats.lost} lost")
        if self.dead_letters:
            found.append(f"{self.dead_letters} dead letters")
        if self.outbox_oldest_s is not None and self.outbox_oldest_s > OUTBOX_STUCK_S:
            found.append("outbox stuck")
        if self.route_lag:
            found.append(f"route {self.route_lag} behind")
        if self.quiet_s is not None and self.quiet_s > QUIET_AFTER_S and self.stats.events:
            found.append("quiet")
        return found

    @property
    def sort_key(self) -> tuple[int, int, int, str, str]:
        """Trouble first (most lost and dead-lettered on top), then by name."""
        weight = self.stats.lost + self.dead_letters
        return (0 if self.troubles else 1, -weight, -len(self.troubles), *self.key)

    @property
    def key(self) -> tuple[str, str]:
        """(cache, topic)."""
        return (self.stats.cache, self.stats.topic)


def all_time_stats(engine: Engine, window_s: int, cache: str | None = None) -> list[TopicStats]:
    """Totals over the default time range of `pipeline stats` (everything up to a day ahead)."""
    since = datetime.fromtimestamp(0, UTC)
    until = datetime.now(UTC) + timedelta(days=1)
    return gather_stats(engine, window_s, since=since, until=until, cache=cache)


def overview_rows(engine: Engine, window_s: int) -> list[TopicRow]:
    """Every topic with its totals and live figures, trouble first."""
    totals = {(s.cache, s.topic): s for s in all_time_stats(engine, window_s)}
    extra: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    with engine.connect() as conn:
        for row in conn.execute(text(_LIVE_SQL), {"rate_s": RATE_WINDOW_S}):
            extra[(row.cache, row.topic)].update(
                events_per_s=row.recent / RATE_WINDOW_S,
                last_seq=row.last_seq,
                page=row.page,
                open_gaps=row.open_gaps,
                quiet_s=row.quiet_s,
            )
        for row in conn.execute(text(_ROUTE_LAG_SQL)):
            extra[(row.cache, row.topic)]["route_lag"] = int(row.lag or 0)
        for row in conn.execute(text(_OUTBOX_SQL)):
            extra[(row.cache, row.topic)].update(
                outbox_pending=row.pending, outbox_oldest_s=row.oldest_s
            )
        for row in conn.execute(text(_DEAD_BY_TOPIC_SQL)):
            extra[(row.cache, row.topic)]["dead_letters"] = row.n
    keys = set(totals) | set(extra)
    rows = [
        TopicRow(stats=totals.get(key) or TopicStats(*key), **extra.get(key, {})) for key in keys
    ]
    return sorted(rows, key=lambda row: row.sort_key)


@dataclass(frozen=True, slots=True)
class Series:
    """A topic's roll-up windows as columns, ready for a chart (times in Unix seconds)."""

    times: list[float] = field(default_factory=list)
    events_per_s: list[float] = field(default_factory=list)
    p50_ms: list[float | None] = field(default_factory=list)
    p99_ms: list[float | None] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, list[Any]]:
        """Column lists keyed by name."""
        return {
            "times": self.times,
            "events_per_s": self.events_per_s,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "lost": self.lost,
        }


_SERIES_SQL = """
SELECT window_start, events, lost, receive_latency_p50_ms AS p50, receive_latency_p99_ms AS p99
FROM rollups
WHERE cache = :cache AND topic = :topic AND window_s = :window_s AND window_start >= :since
ORDER BY window_start
"""


def topic_series(engine: Engine, window_s: int, cache: str, topic: str, since: datetime) -> Series:
    """Throughput, latency and lost per roll-up window of one topic since ``since``."""
    series = Series()
    params = {"cache": cache, "topic": topic, "window_s": window_s, "since": since}
    with engine.connect() as conn:
        for row in conn.execute(text(_SERIES_SQL), params):
            series.times.append(row.window_start.timestamp())
            series.events_per_s.append(row.events / window_s)
            series.p50_ms.append(row.p50)
            series.p99_ms.append(row.p99)
            series.lost.append(row.lost)
    return series


@dataclass(frozen=True, slots=True)
class Reset:
    """A topic's numbering restarted: epoch ``epoch`` began at ``started``."""

    epoch: int
    page: int | None
    first_seq: int
    started: datetime


_RESETS_SQL = """
SELECT epoch, min(sequence_page) AS page, min(topic_sequence_number) AS first_seq,
    min(received_at) AS started
FROM events WHERE cache = :cache AND topic = :topic AND epoch IS NOT NULL
GROUP BY epoch ORDER BY epoch DESC LIMIT :limit
"""


def topic_detail(
    engine: Engine, window_s: int, cache: str, topic: str
) -> tuple[TopicStats | None, list[LostRange], list[Reset]]:
    """One topic's totals, its lost ranges (newest first) and its epochs (resets)."""
    found = [s for s in all_time_stats(engine, window_s, cache) if s.topic == topic]
    stats = found[0] if found else None
    lost = sorted(stats.lost_ranges, key=lambda r: r.declared_at, reverse=True) if stats else []
    with engine.connect() as conn:
        rows = conn.execute(text(_RESETS_SQL), {"cache": cache, "topic": topic, "limit": 50})
        resets = [Reset(r.epoch, r.page, r.first_seq, r.started) for r in rows]
    return stats, lost, resets
