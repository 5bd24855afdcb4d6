"""Per-topic sequencing in Postgres: the pure rules of ``rules``, applied under a row lock.

A batch is sequenced in the same transaction that stores it. Each topic's cursor row is locked
FOR UPDATE (in a fixed order, so two batches never deadlock), its state advanced with the batch's
deliveries, and written back before commit. Workers therefore take turns per topic, and since the
events and the cursor commit together, no event is fed twice or skipped, however many workers run
and whichever of them crashes.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update

from pipeline.config import Settings
from pipeline.db import Executor
from pipeline.models import DuplicateDelivery, LostRange, TopicCursorRow
from pipeline.sequencing.rules import (
    Classified,
    Delivery,
    GapDeclaredLost,
    GapFilled,
    Kind,
    Outcome,
    SequencePolicy,
    TopicCursor,
    advance,
)

logger = logging.getLogger(__name__)

TopicKey = tuple[str, str]
Horizon = Callable[[], int | None]
"""Reads sequencing's ``horizon_ms`` (``ingest_ledger.sequencing_horizon``): called only when a
topic would declare a gap lost, so the common batch pays no extra round trip."""


def policy_from(settings: Settings) -> SequencePolicy:
    """The sequencing policy configured by PIPELINE_REORDER_WINDOW_S and PIPELINE_RESET_IDLE_S."""
    return SequencePolicy(
        reorder_window_ms=max(1, int(settings.pipeline_reorder_window_s * 1000)),
        reset_idle_ms=max(1, int(settings.pipeline_reset_idle_s * 1000)),
    )


@dataclass
class SequenceReport:
    """What sequencing one batch (or one tick) found."""

    duplicates: int = 0
    late: int = 0
    resets: int = 0
    lost: int = 0
    filled: int = 0
    topics: set[TopicKey] = field(default_factory=set)
    cursors: list[dict[str, Any]] = field(default_factory=list)
    """With ``sequence_rows(save=False)``: the cursors' new states, for the caller to write."""


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


_LOCK_CURSORS = text(
    "INSERT INTO topic_cursors (cache, topic, state) "
    "SELECT k.cache, k.topic, CAST(:state AS jsonb) "
    "FROM unnest(CAST(:caches AS text[]), CAST(:topics AS text[])) AS k(cache, topic) "
    "ORDER BY k.cache, k.topic "
    "ON CONFLICT (cache, topic) DO UPDATE SET state = topic_cursors.state "
    "RETURNING cache, topic, state"
)  # plain text, one statement whatever the number of topics (a VALUES list compiles per batch)


def lock_cursors(conn: Executor, keys: Iterable[TopicKey]) -> dict[TopicKey, TopicCursor]:
    """Create missing cursor rows and lock all of them, in key order (no deadlocks).

    One statement: ``INSERT … ON CONFLICT DO UPDATE`` (a no-op update) locks each existing row as
    it meets it, in sorted order, and returns every row's state.
    """
    ordered = sorted(set(keys))
    if not ordered:
        return {}
    params = {
        "caches": [c for c, _ in ordered],
        "topics": [t for _, t in ordered],
        "state": json.dumps(TopicCursor().to_json()),
    }
    rows = conn.execute(_LOCK_CURSORS, params).all()
    return {(r.cache, r.topic): TopicCursor.from_json(r.state) for r in rows}


def sequence_rows(
    conn: Executor,
    rows: list[dict[str, Any]],
    policy: SequencePolicy,
    *,
    save: bool = True,
    horizon: Horizon | None = None,
) -> tuple[list[dict[str, Any]], SequenceReport]:
    """Classify a batch's event rows in arrival order; return the rows worth storing.

    Each row gains ``epoch`` and ``arrival``; duplicates are recorded, not returned; gaps that the
    reorder window closes are recorded as lost ranges. Must run inside the storing transaction.
    ``save=False`` leaves writing the locked cursors to the caller (``report.cursors``), so that
    it can write them in the statement that stores the events. ``horizon`` may hold back
    declaring gaps lost (see ``Horizon``).
    """
    report = SequenceReport()
    horizon = functools.cache(horizon) if horizon is not None else None
    by_topic: dict[TopicKey, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_topic[(row["cache"], row["topic"])].append(index)
    cursors = lock_cursors(conn, by_topic)
    keep = [True] * len(rows)
    duplicates: list[dict[str, Any]] = []
    for key, indexes in by_topic.items():
        deliveries = [
            Delivery(
                event_id=i,
                seq=rows[i]["topic_sequence_number"],
                event_ts_ms=rows[i]["event_timestamp"],
                received_ts_ms=_ms(rows[i]["received_at"]),
                page=rows[i]["sequence_page"],
            )
            for i in indexes
        ]
        now_ms = max(d.received_ts_ms for d in deliveries)
        cursor, outcomes = _advance(cursors[key], deliveries, now_ms, policy, horizon)
        for outcome in outcomes:
            if isinstance(outcome, Classified):
                row = rows[int(outcome.event_id)]
                if outcome.kind is Kind.DUPLICATE:
                    keep[int(outcome.event_id)] = False
                    duplicates.append(_duplicate(key, outcome, row["received_at"]))
                    continue
                stale = outcome.kind is Kind.STALE
                row["epoch"] = None if stale else outcome.epoch
                row["arrival"] = outcome.kind.value
                report.late += outcome.kind is Kind.LATE
                report.resets += outcome.kind is Kind.RESET
        _record_gaps(conn, key, outcomes, now_ms, report)
        if save:
            _save(conn, key, cursor, now_ms)
        else:
            report.cursors.append(
                {"cache": key[0], "topic": key[1], "state": cursor.to_json(), "newest": now_ms}
            )
        report.topics.add(key)
    if duplicates:  # one statement for the batch's duplicates, not one each
        conn.execute(insert(DuplicateDelivery), duplicates)
        report.duplicates += len(duplicates)
    return [row for row, kept in zip(rows, keep, strict=True) if kept], report


def tick(
    conn: Executor,
    policy: SequencePolicy,
    now_ms: int | None = None,
    horizon: Horizon | None = None,
) -> SequenceReport:
    """Declare gaps whose reorder window has passed, on topics no batch is sequencing right now.

    Topics locked by an ingest transaction are skipped: that batch declares their gaps itself.
    ``horizon`` as in ``sequence_rows``.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    horizon = functools.cache(horizon) if horizon is not None else None
    report = SequenceReport()
    rows = conn.execute(
        select(TopicCursorRow.cache, TopicCursorRow.topic, TopicCursorRow.state)
        .order_by(TopicCursorRow.cache, TopicCursorRow.topic)
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        cursor = TopicCursor.from_json(row.state)
        advanced, outcomes = _advance(cursor, [], now_ms, policy, horizon)
        if advanced == cursor:
            continue
        key = (row.cache, row.topic)
        _record_gaps(conn, key, outcomes, now_ms, report)
        _save(conn, key, advanced, None)
        report.topics.add(key)
    return report


def _advance(
    cursor: TopicCursor,
    deliveries: list[Delivery],
    now_ms: int,
    policy: SequencePolicy,
    horizon: Horizon | None,
) -> tuple[TopicCursor, list[Outcome]]:
    """``advance``; redone with the horizon if it declared a gap lost (advance is pure)."""
    advanced, outcomes = advance(cursor, deliveries, now_ms, policy)
    if horizon is not None and any(isinstance(o, GapDeclaredLost) for o in outcomes):
        advanced, outcomes = advance(cursor, deliveries, now_ms, policy, horizon())
    return advanced, outcomes


def _duplicate(key: TopicKey, outcome: Classified, received_at: datetime) -> dict[str, Any]:
    """A ``DuplicateDelivery`` row."""
    return {
        "cache": key[0],
        "topic": key[1],
        "epoch": outcome.epoch,
        "topic_sequence_number": outcome.seq,
        "received_at": received_at,
    }


def _record_gaps(
    conn: Executor,
    key: TopicKey,
    outcomes: list[Outcome],
    now_ms: int,
    report: SequenceReport,
) -> None:
    cache, topic = key
    for outcome in outcomes:
        if isinstance(outcome, GapDeclaredLost):
            conn.execute(
                insert(LostRange).values(
                    cache=cache,
                    topic=topic,
                    epoch=outcome.epoch,
                    first_seq=outcome.first,
                    last_seq=outcome.last,
                    declared_at=_at(now_ms),
                )
            )
            report.lost += outcome.last - outcome.first + 1
        elif isinstance(outcome, GapFilled):
            _unlose(conn, key, outcome)
            report.filled += 1


def _unlose(conn: Executor, key: TopicKey, filled: GapFilled) -> None:
    """Remove one number from the lost range holding it (splitting the range if needed)."""
    cache, topic = key
    found = conn.execute(
        select(LostRange.id, LostRange.first_seq, LostRange.last_seq, LostRange.declared_at)
        .where(
            LostRange.cache == cache,
            LostRange.topic == topic,
            LostRange.epoch == filled.epoch,
            LostRange.first_seq <= filled.seq,
            LostRange.last_seq >= filled.seq,
        )
        .limit(1)
    ).first()
    if found is None:
        logger.warning("filled number not in a lost range topic=%s seq=%d", topic, filled.seq)
        return
    pieces = [(found.first_seq, filled.seq - 1), (filled.seq + 1, found.last_seq)]
    conn.execute(delete(LostRange).where(LostRange.id == found.id))
    for first, last in pieces:
        if first <= last:
            conn.execute(
                insert(LostRange).values(
                    cache=cache,
                    topic=topic,
                    epoch=filled.epoch,
                    first_seq=first,
                    last_seq=last,
                    declared_at=found.declared_at,
                )
            )


def _save(conn: Executor, key: TopicKey, cursor: TopicCursor, newest_ms: int | None) -> None:
    values: dict[str, Any] = {"state": cursor.to_json(), "updated_at": datetime.now(UTC)}
    if newest_ms is not None:
        values["newest_received_at"] = func.greatest(
            TopicCursorRow.newest_received_at, _at(newest_ms)
        )
    conn.execute(
        update(TopicCursorRow)
        .where(TopicCursorRow.cache == key[0], TopicCursorRow.topic == key[1])
        .values(**values)
    )
