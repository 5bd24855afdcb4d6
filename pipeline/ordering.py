"""Ordered routes: a cursor per (route, cache, topic) releasing events in sequence order.

An event is released only when every number before it in its epoch was received or declared lost
by the sequencer (its epoch's contiguous watermark), and an epoch only after the one before it
was released completely. So a gap holds later events back until the number arrives or the
reorder window declares it lost, and then the cursor moves past it. One worker at a time drives a
topic (a session advisory lock), and the next event starts only after the previous one's result,
its outbox rows and the cursor's move committed in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, exists, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from pipeline.models import Event, RouteCursor, TopicCursorRow, WorkflowRun
from pipeline.topic_cursor import TopicCursor

HISTORY = timedelta(minutes=5)
"""A new cursor starts with the topic's events of this long before it; replay runs older ones."""


def release_limit(state: TopicCursor, epoch: int) -> int | None:
    """Highest sequence number of ``epoch`` that may run now; None when the whole epoch may."""
    current, previous = state.current, state.previous
    if current is None:
        return -1
    if epoch == current.number:
        return current.contiguous
    if previous is not None and epoch == previous.number:
        return previous.contiguous
    if epoch < (previous or current).number:
        return None  # a retired epoch: all its gaps were declared lost when it retired
    return -1


def releasable(state: TopicCursor | None, epoch: int, seq: int) -> bool:
    """Whether the event (epoch, seq) may run, given the topic's sequencing state."""
    if state is None:
        return False
    limit = release_limit(state, epoch)
    return limit is None or seq <= limit


@dataclass(frozen=True)
class Position:
    """A route cursor as locked: where it is and what holds it."""

    epoch: int
    seq: int
    event_id: int
    inflight_event_id: int | None
    inflight_since: datetime | None
    attempts: int
    retry_at: datetime | None
    created_at: datetime
    now: datetime


def lock_cursor(conn: Connection, route: str, cache: str, topic: str) -> Position:
    """Create the cursor if missing and lock it FOR UPDATE for this transaction."""
    conn.execute(
        pg_insert(RouteCursor)
        .values(route=route, cache=cache, topic=topic)
        .on_conflict_do_nothing()
    )
    row = conn.execute(
        select(RouteCursor, func.now().label("now"))
        .where(RouteCursor.route == route, RouteCursor.cache == cache, RouteCursor.topic == topic)
        .with_for_update(of=RouteCursor)
    ).one()
    return Position(
        row.epoch,
        row.seq,
        row.event_id,
        row.inflight_event_id,
        row.inflight_since,
        row.attempts,
        row.retry_at,
        row.created_at,
        row.now,
    )


def topic_state(conn: Connection, cache: str, topic: str) -> TopicCursor | None:
    """The sequencer's state of a topic (None before its first event)."""
    state = conn.execute(
        select(TopicCursorRow.state).where(
            TopicCursorRow.cache == cache, TopicCursorRow.topic == topic
        )
    ).scalar_one_or_none()
    return None if state is None else TopicCursor.from_json(state)


def next_event(conn: Connection, cache: str, topic: str, at: Position) -> Any | None:
    """The event after the cursor, if the sequencer lets it run now (a Row of events)."""
    row = conn.execute(
        select(Event)
        .where(
            Event.cache == cache,
            Event.topic == topic,
            Event.epoch.is_not(None),
            tuple_(Event.epoch, Event.topic_sequence_number, Event.id)
            > tuple_(at.epoch, at.seq, at.event_id),
            Event.received_at >= at.created_at - HISTORY,
        )
        .order_by(Event.epoch, Event.topic_sequence_number, Event.id)
        .limit(1)
    ).first()
    if row is None or not releasable(
        topic_state(conn, cache, topic), row.epoch, row.topic_sequence_number
    ):
        return None
    return row


def _where(route: str, cache: str, topic: str) -> Any:
    return and_(RouteCursor.route == route, RouteCursor.cache == cache, RouteCursor.topic == topic)


def move_past(conn: Connection, route: str, event: Any, *, expect_inflight: bool) -> bool:
    """Move the cursor past ``event`` (done or given up); False if it was not the one due.

    The cursor only moves forward, and with ``expect_inflight`` (a canvas finished) only if that
    event is in flight, so a late duplicate callback changes nothing.
    """
    where = and_(
        _where(route, event.cache, event.topic),
        tuple_(RouteCursor.epoch, RouteCursor.seq, RouteCursor.event_id)
        < tuple_(event.epoch, event.topic_sequence_number, event.id),
    )
    if expect_inflight:
        where = and_(where, RouteCursor.inflight_event_id == event.id)
    moved = conn.execute(
        update(RouteCursor)
        .where(where)
        .values(
            epoch=event.epoch,
            seq=event.topic_sequence_number,
            event_id=event.id,
            inflight_event_id=None,
            inflight_since=None,
            attempts=0,
            retry_at=None,
            released=RouteCursor.released + 1,
            updated_at=func.now(),
        )
    )
    return bool(moved.rowcount)


def mark_inflight(conn: Connection, route: str, event: Any) -> None:
    """Record that ``event``'s canvas was started (its callback will move the cursor)."""
    conn.execute(
        update(RouteCursor)
        .where(_where(route, event.cache, event.topic))
        .values(inflight_event_id=event.id, inflight_since=func.now(), updated_at=func.now())
    )


def hold_for_retry(conn: Connection, route: str, event: Any, delay_s: float) -> None:
    """Count a failed attempt of the due event and hold the topic for ``delay_s``."""
    conn.execute(
        update(RouteCursor)
        .where(_where(route, event.cache, event.topic))
        .values(
            attempts=RouteCursor.attempts + 1,
            retry_at=func.now() + timedelta(seconds=delay_s),
            inflight_event_id=None,
            inflight_since=None,
            updated_at=func.now(),
        )
    )


def late_events(
    conn: Connection, route: str, cache: str, topic: str, ids: list[int] | None = None
) -> list[int]:
    """Events of the topic the cursor already passed without running them (they arrived late).

    A number the sequencer declared lost that arrives after all (a crashed worker's batch,
    redelivered after the reorder window) cannot run in order any more; it runs late instead of
    never. ``ids`` narrows the search to a batch's new events; without it, the last hour is read.
    """
    at = conn.execute(select(RouteCursor).where(_where(route, cache, topic))).first()
    if at is None:
        return []
    behind = or_(
        Event.epoch.is_(None),
        tuple_(Event.epoch, Event.topic_sequence_number, Event.id)
        <= tuple_(at.epoch, at.seq, at.event_id),
    )
    window = (
        Event.id.in_(ids)
        if ids is not None
        else Event.received_at > func.now() - timedelta(hours=1)
    )
    never_ran = ~exists().where(WorkflowRun.route == route, WorkflowRun.event_id == Event.id)
    found = conn.execute(
        select(Event.id)
        .where(
            Event.cache == cache,
            Event.topic == topic,
            Event.received_at >= at.created_at - HISTORY,
            window,
            behind,
            never_ran,
        )
        .order_by(Event.id)
        .limit(1000)
    ).scalars()
    return list(found)


def load_event(conn: Connection, event_id: int) -> Any | None:
    """One stored event (a Row), or None if it is gone."""
    return conn.execute(select(Event).where(Event.id == event_id)).first()
