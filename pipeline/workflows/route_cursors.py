"""Ordered routes: a cursor per (route, cache, topic) releasing events in sequence order.

An event is released only when every number before it in its epoch was received or declared lost
by the sequencer (its epoch's contiguous watermark), and an epoch only after the one before it
was released completely. So a gap holds later events back until the number arrives or the
reorder window declares it lost, and then the cursor moves past it. One worker at a time drives a
topic (a session advisory lock), and the next event starts only after the previous one's result,
its outbox rows and the cursor's move committed in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Update,
)

from pipeline.sequencing.state import TopicCursor
from pipeline.workflows.route_cursor_sql import (
    ENSURE,
    HOLD,
    INFLIGHT,
    LATE,
    LATE_OF_ROUTE,
    LOAD,
    LOCK_OR_POSITION,
    MOVE,
    PEEK,
    PEEK_AND_MARK,
    PEEK_CURSOR_COLUMNS,
    POSITION,
)


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
class Peek:
    """A route cursor and what it may run next: ``events``, in order (none if none may run)."""

    epoch: int
    seq: int
    event_id: int
    inflight_event_id: int | None
    inflight_since: datetime | None
    attempts: int
    retry_at: datetime | None
    now: datetime
    events: tuple[EventRow, ...]
    pending: bool = False


@dataclass(frozen=True)
class EventRow:
    """The columns of an event a workflow run needs (named as on the events table)."""

    id: int
    cache: str
    topic: str
    topic_sequence_number: int
    epoch: int
    text: str
    event_timestamp: int | None
    publish_timestamp: int | None
    token_id: str
    received_at: datetime


def topic_key(route: str, cache: str, topic: str) -> str:
    """A route's topic as one string: its advisory lock's key and its outbox ordering key."""
    return f"{route}\x1f{cache}\x1f{topic}"


def _here(route: str, cache: str, topic: str) -> dict[str, Any]:
    return {"p_route": route, "p_cache": cache, "p_topic": topic}


def ensure_cursor(conn: Connection, route: str, cache: str, topic: str) -> None:
    """Create the route's cursor of a topic if it has none."""
    conn.execute(ENSURE, _here(route, cache, topic))


def peek(
    conn: Connection,
    route: str,
    cache: str,
    topic: str,
    mark_sent: Sequence[int] = (),
) -> Peek | None:
    """In one query: the cursor, the events after it that the sequencer releases (up to
    PEEK_AHEAD) and whether the topic has outbox rows pending. None if the cursor does not exist
    yet. Outbox rows ``mark_sent`` are marked sent on the way (``pending`` does not see that
    yet)."""
    key = topic_key(route, cache, topic)
    params = _here(route, cache, topic) | {"p_key": key}
    if mark_sent:
        rows = conn.execute(PEEK_AND_MARK, params | {"p_sent": list(mark_sent)}).all()
    else:
        rows = conn.execute(PEEK, params).all()
    if not rows:
        return None
    row = rows[0]
    events: list[EventRow] = []
    if row.e_id is not None:
        state = TopicCursor.from_json(json.loads(row.state)) if row.state is not None else None
        for following in rows:  # in order; the first one held back holds back the rest
            if not releasable(state, following.e_epoch, following.e_topic_sequence_number):
                break
            events.append(EventRow(*following[_EVENT_AT:]))
    return Peek(
        row.epoch,
        row.seq,
        row.event_id,
        row.inflight_event_id,
        row.inflight_since,
        row.attempts,
        row.retry_at,
        row.now,
        tuple(events),
        bool(row.pending),
    )


_EVENT_AT = len(PEEK_CURSOR_COLUMNS) + 3  # now, state, pending
"""Where a peek row's event columns start (see ``cursor_sql._peek_statement``)."""


Position = tuple[int, int, int]
"""Where a cursor stands: (epoch, sequence number, event id) of the last event it passed."""


@dataclass(frozen=True)
class Move:
    """A cursor move: its statement, parameters, and whether to look for events it passes over
    (``SKIPPED``); no event can lie between neighbouring numbers of one epoch."""

    statement: Update
    params: dict[str, Any]
    check_skipped: bool


def move_cursor(route: str, event: Any, *, expect_inflight: bool, since: Position) -> Move:
    """The move of the cursor from ``since`` past ``event`` (done or given up).

    The cursor only moves forward, and with ``expect_inflight`` (a canvas finished) only if that
    event is in flight, so a late duplicate callback changes nothing.
    """
    epoch, seq = event.epoch, event.topic_sequence_number
    same_epoch = since[0] == epoch
    params = _here(route, event.cache, event.topic) | {
        "m_epoch": epoch,
        "m_seq": seq,
        "m_event_id": event.id,
        "f_epoch": since[0],
        "f_seq": since[1],
        "f_event_id": since[2],
        "p_lo": since[1] if same_epoch else 0,
        "p_hi": seq if same_epoch else 2**63 - 1,
    }
    return Move(MOVE[expect_inflight], params, not (same_epoch and seq == since[1] + 1))


def position(conn: Connection, route: str, cache: str, topic: str) -> Position:
    """Where the route's cursor of a topic stands now ((0, 0, 0) if it has none)."""
    row = conn.execute(POSITION, _here(route, cache, topic)).first()
    return (row.epoch, row.seq, row.event_id) if row is not None else (0, 0, 0)


def mark_inflight(conn: Connection, route: str, event: Any) -> None:
    """Record that ``event``'s canvas was started (its callback will move the cursor)."""
    conn.execute(INFLIGHT, _here(route, event.cache, event.topic) | {"p_event_id": event.id})


def hold_for_retry(conn: Connection, route: str, event: Any, delay_s: float) -> None:
    """Count a failed attempt of the due event and hold the topic for ``delay_s``."""
    conn.execute(HOLD, _here(route, event.cache, event.topic) | {"p_delay_s": delay_s})


Places = Mapping[int, tuple[int | None, int]]
"""Where new events stand in their topic: event id -> (epoch, sequence number)."""


def late_candidates(ids: Sequence[int], places: Places, cursor: Position) -> list[int]:
    """Of ``ids``, those that may have come too late for a cursor at ``cursor``: behind it, or
    of a place not known here. The rest lie ahead of the cursor, so it will run them in order.

    Knowing the places (from the batch's INSERT … RETURNING) saves asking Postgres about events
    that are plainly ahead, the usual case; ``late_events`` decides about the rest.
    """
    found = []
    for event_id in ids:
        epoch, seq = places.get(event_id, (None, 0))
        if epoch is None or (epoch, seq, event_id) <= cursor:
            found.append(event_id)
    return found


def late_events(conn: Connection, route: str, cache: str, topic: str, ids: list[int]) -> list[int]:
    """Of ``ids``, the topic's events the cursor already passed without running them, by id.

    A number the sequencer declared lost that arrives after all (a crashed worker's batch,
    redelivered after the reorder window) cannot run in order any more; it runs late instead of
    never.
    """
    if not ids:
        return []
    return list(conn.execute(LATE, _here(route, cache, topic) | {"p_ids": ids}).scalars())


def late_events_of_route(conn: Connection, route: str, ids: list[int]) -> list[int]:
    """``late_events`` for events of many of the route's topics, in one round trip."""
    if not ids:
        return []
    return list(conn.execute(LATE_OF_ROUTE, {"p_route": route, "p_ids": ids}).scalars())


def late_behind(
    conn: Connection,
    route: str,
    cache: str,
    topic: str,
    ids: Sequence[int],
    places: Places,
    cursor: Position,
) -> list[int]:
    """``late_events`` of ``ids``, asking Postgres only about the ``late_candidates``."""
    return late_events(conn, route, cache, topic, late_candidates(ids, places, cursor))


def lock_or_late(
    conn: Connection,
    route: str,
    cache: str,
    topic: str,
    ids: list[int],
    places: Places | None = None,
) -> tuple[bool, list[int]]:
    """Try the topic's driver lock; if it is taken, also return ``late_events(ids)``.

    One round trip, unless some of ``ids`` may lie behind the cursor (see ``late_candidates``).
    """
    key = topic_key(route, cache, topic)
    params = _here(route, cache, topic) | {"p_key": key}
    cursor = conn.execute(LOCK_OR_POSITION, params).scalar_one()
    if cursor is None:
        return True, []
    if not cursor:  # the route has no cursor of the topic yet: it will run them all in order
        return False, []
    epoch, seq, event_id = cursor
    return False, late_behind(conn, route, cache, topic, ids, places or {}, (epoch, seq, event_id))


def load_event(conn: Connection, event_id: int) -> Any | None:
    """One stored event (a Row), or None if it is gone."""
    return conn.execute(LOAD, {"p_event_id": event_id}).first()
