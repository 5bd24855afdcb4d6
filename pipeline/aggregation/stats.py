"""Per-topic totals from roll-ups and lost ranges: `gather_stats` and the `pipeline stats` command.

Totals of events, bytes, resets, duplicates and out-of-order arrivals are sums over the roll-up
windows that start in [since, until), so they survive retention and cost one row per window.
Lost numbers and gaps come from lost_ranges (declared in [since, until)), which also lists them.
Latency percentiles are per-window percentiles averaged with the windows' event counts as
weights: exact within a window, an approximation across windows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Engine

MAX_RANGES = 1000
MS_DECIMALS = 2  # latency output to 10 µs: finer digits are float noise, not measurement

_TOTALS = """
SELECT cache, topic, count(*) AS windows, min(window_start) AS first_window,
    max(window_start) AS last_window, sum(events)::bigint AS events, sum(bytes)::bigint AS bytes,
    sum(resets)::bigint AS resets, sum(duplicates)::bigint AS duplicates,
    sum(out_of_order)::bigint AS out_of_order, {latency}
FROM rollups
WHERE window_s = :window_s AND (CAST(:cache AS text) IS NULL OR cache = :cache)
    AND window_start >= :since AND window_start < :until
GROUP BY cache, topic
"""
_WEIGHTED = (
    "sum({col} * events) FILTER (WHERE {col} IS NOT NULL)"
    " / nullif(sum(events) FILTER (WHERE {col} IS NOT NULL), 0) AS {col}"
)
_LATENCY_COLUMNS = [
    f"{k}_latency_{p}_ms" for k in ("publish", "receive") for p in ("p50", "p95", "p99")
]

_LOST = """
SELECT cache, topic, epoch, first_seq, last_seq, declared_at FROM (
    SELECT *, row_number() OVER (PARTITION BY cache, topic ORDER BY epoch, first_seq) AS n
    FROM lost_ranges
    WHERE (CAST(:cache AS text) IS NULL OR cache = :cache)
        AND declared_at >= :since AND declared_at < :until
) AS ranked
WHERE n <= :max_ranges
ORDER BY cache, topic, epoch, first_seq
"""
_LOST_TOTALS = """
SELECT cache, topic, count(*) AS gaps, sum(last_seq - first_seq + 1)::bigint AS lost
FROM lost_ranges
WHERE (CAST(:cache AS text) IS NULL OR cache = :cache)
    AND declared_at >= :since AND declared_at < :until
GROUP BY cache, topic
"""


def round_ms(value: float | None) -> float | None:
    """A latency in milliseconds as output: rounded to ``MS_DECIMALS`` places."""
    return None if value is None else round(value, MS_DECIMALS)


@dataclass(frozen=True, slots=True)
class LostRange:
    """Numbers first..last of an epoch that never arrived, declared lost at ``declared_at``."""

    epoch: int
    first: int
    last: int
    declared_at: datetime

    @property
    def size(self) -> int:
        """How many numbers the range holds."""
        return self.last - self.first + 1

    def label(self) -> str:
        """``4`` or ``11-12``."""
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True, slots=True)
class Latency:
    """Delivery latency percentiles in milliseconds (None: no event carried the timestamps)."""

    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


@dataclass(frozen=True, slots=True)
class TopicStats:
    """Totals of one (cache, topic) over the selected time."""

    cache: str
    topic: str
    windows: int = 0
    first_window: datetime | None = None
    last_window: datetime | None = None
    events: int = 0
    bytes: int = 0
    resets: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    lost: int = 0
    gaps: int = 0
    publish_latency: Latency = field(default_factory=Latency)
    receive_latency: Latency = field(default_factory=Latency)
    lost_ranges: tuple[LostRange, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO 8601)."""
        data = asdict(self)
        for kind in ("publish_latency", "receive_latency"):
            data[kind] = {k: round_ms(v) for k, v in data[kind].items()}
        for name in ("first_window", "last_window"):
            value = getattr(self, name)
            data[name] = value.isoformat() if value else None
        data["lost_ranges"] = [
            {
                "epoch": r.epoch,
                "first": r.first,
                "last": r.last,
                "declared_at": r.declared_at.isoformat(),
            }
            for r in self.lost_ranges
        ]
        return data


def gather_stats(
    engine: Engine,
    window_s: int,
    *,
    since: datetime,
    until: datetime,
    cache: str | None = None,
    topic: str | None = None,
    max_ranges: int = MAX_RANGES,
) -> list[TopicStats]:
    """Per-topic totals, sorted by cache and topic; ``topic`` is a glob (``room-*``)."""
    params = {
        "window_s": window_s,
        "cache": cache,
        "since": since,
        "until": until,
        "max_ranges": max_ranges,
    }
    from sqlalchemy import text

    latency = ", ".join(_WEIGHTED.format(col=col) for col in _LATENCY_COLUMNS)
    with engine.connect() as conn:
        totals = conn.execute(text(_TOTALS.format(latency=latency)), params).all()
        lost_totals = conn.execute(text(_LOST_TOTALS), params).all()
        ranges = conn.execute(text(_LOST), params).all()
    by_topic: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    for row in totals:
        values = row._asdict()
        by_topic[(row.cache, row.topic)].update(
            {k: v for k, v in values.items() if k not in _LATENCY_COLUMNS},
            publish_latency=Latency(*(values[c] for c in _LATENCY_COLUMNS[:3])),
            receive_latency=Latency(*(values[c] for c in _LATENCY_COLUMNS[3:])),
        )
    for row in lost_totals:
        by_topic[(row.cache, row.topic)].update(row._asdict())
    listed: dict[tuple[str, str], list[LostRange]] = defaultdict(list)
    for row in ranges:
        listed[(row.cache, row.topic)].append(
            LostRange(row.epoch, row.first_seq, row.last_seq, row.declared_at)
        )
    return [
        TopicStats(**values, lost_ranges=tuple(listed[key]))
        for key, values in sorted(by_topic.items())
        if topic is None or fnmatchcase(key[1], topic)
    ]


_AGE_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(value: str, now: datetime) -> datetime:
    """An ISO 8601 time (UTC if it names no zone) or an age before ``now``: 90s, 15m, 2h, 7d."""
    unit = _AGE_UNITS_S.get(value[-1:].lower())
    if unit is not None and value[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(seconds=float(value[:-1]) * unit)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"expected an ISO time or an age like 15m, 2h, 7d; got {value!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_table(rows: list[TopicStats]) -> str:
    """The `pipeline stats` table: one line per topic, then the lost ranges."""
    header = "CACHE TOPIC EVENTS LOST GAPS RESETS DUPS LATE P50ms P95ms P99ms"
    lines: list[tuple[str, ...]] = [tuple(header.split(" "))]
    for r in rows:
        counts = (r.events, r.lost, r.gaps, r.resets, r.duplicates, r.out_of_order)
        latency = (r.receive_latency.p50_ms, r.receive_latency.p95_ms, r.receive_latency.p99_ms)
        lines.append((r.cache, r.topic, *map(str, counts), *map(_ms, latency)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = [
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    for r in rows:
        by_epoch: dict[int, list[str]] = defaultdict(list)
        for lost in r.lost_ranges:
            by_epoch[lost.epoch].append(lost.label())
        for epoch, labels in sorted(by_epoch.items()):
            out.append(f"lost {r.cache}/{r.topic} epoch {epoch}: {', '.join(labels)}")
    if not rows:
        out.append("(no data in this time range)")
    out.append("latency: received_at - event_timestamp, per-window percentiles weighted by events")
    return "\n".join(out)
