"""One `pipeline demo` run's own numbers, on stores that may hold earlier runs' data.

A run is marked two ways: the ids the events and outbox tables had reached when it started, and a
tag that every message it publishes carries in its text. Its events are the rows past the mark
that carry the tag, so a rerun on the same data folder counts only itself, and leftovers of an
earlier run (a batch still in the broker, an outbox row still pending) are not counted as its own.
Lost messages and duplicate deliveries are per-topic facts, not per-message ones: they count what
the sequencer recorded on the demo's topics since the run started.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, text

_MARK = """
SELECT coalesce((SELECT max(id) FROM events), 0), coalesce((SELECT max(id) FROM outbox), 0)
"""

_COUNTS = """
WITH mine AS (
    SELECT id, source, arrival, received_at, event_timestamp
    FROM events
    WHERE id > :first_event_id AND strpos(text, :tag) > 0
), topics AS (
    SELECT * FROM unnest(CAST(:caches AS text[]), CAST(:topics AS text[])) AS t (cache, topic)
)
SELECT
    (SELECT count(*) FROM mine) AS stored,
    (SELECT count(*) FROM mine WHERE source = 'webhook') AS by_webhook,
    (SELECT count(*) FROM mine WHERE source = 'subscription') AS by_subscription,
    (SELECT count(*) FROM mine WHERE arrival = 'late') AS out_of_order,
    (SELECT percentile_cont(0.5) WITHIN GROUP
        (ORDER BY date_part('epoch', received_at) * 1000 - event_timestamp)
     FROM mine WHERE event_timestamp IS NOT NULL) AS receive_p50_ms,
    (SELECT coalesce(sum(l.last_seq - l.first_seq + 1), 0) FROM lost_ranges l
     JOIN topics USING (cache, topic) WHERE l.declared_at >= :started_at) AS lost,
    (SELECT count(*) FROM duplicate_deliveries d
     JOIN topics USING (cache, topic) WHERE d.received_at >= :started_at) AS duplicates,
    (SELECT count(*) FROM outbox o JOIN mine ON mine.id = o.event_id
     WHERE o.id > :first_outbox_id AND o.status = 'sent') AS outbox_sent,
    (SELECT count(*) FROM outbox o JOIN mine ON mine.id = o.event_id
     WHERE o.id > :first_outbox_id AND o.status = 'pending') AS outbox_pending
"""


@dataclass(frozen=True)
class RunCounts:
    """What one run stored, lost and sent."""

    stored: int
    by_webhook: int
    by_subscription: int
    out_of_order: int
    receive_p50_ms: float | None
    lost: int
    duplicates: int
    outbox_sent: int
    outbox_pending: int


@dataclass(frozen=True)
class DemoRun:
    """The mark a run leaves on the stores before it publishes anything."""

    tag: str
    started_at: datetime
    first_event_id: int
    first_outbox_id: int

    @classmethod
    def begin(cls, engine: Engine) -> DemoRun:
        """Mark the stores' current ends and pick a fresh tag for this run's messages."""
        with engine.connect() as conn:
            events, outbox = conn.execute(text(_MARK)).one()
        return cls(
            tag=f"run {secrets.token_hex(3)}",
            started_at=datetime.now(UTC),
            first_event_id=int(events),
            first_outbox_id=int(outbox),
        )

    def counts(self, engine: Engine, inbound: list[tuple[str, str]]) -> RunCounts:
        """This run's counts; ``inbound`` are the (cache, topic) pairs it published to."""
        params = {
            "tag": self.tag,
            "first_event_id": self.first_event_id,
            "first_outbox_id": self.first_outbox_id,
            "started_at": self.started_at,
            "caches": [cache for cache, _ in inbound],
            "topics": [topic for _, topic in inbound],
        }
        with engine.connect() as conn:
            row = conn.execute(text(_COUNTS), params).one()
        values = row._asdict()
        p50 = values.pop("receive_p50_ms")
        return RunCounts(
            **{k: int(v) for k, v in values.items()},
            receive_p50_ms=None if p50 is None else float(p50),
        )


def aligned(title: str, rows: list[tuple[str, str]]) -> str:
    """A summary section: its title, then one label column with the values aligned after it."""
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join([title, *(f"  {label:<{width}}{value}" for label, value in rows)])
