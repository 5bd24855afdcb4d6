"""SQL of the ordered routes' cursors, built once with bound parameters.

Building SQLAlchemy expressions costs more than running them, and these run several times per
event, so each statement is constructed at import and executed with a parameter dict.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Text,
    Update,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, array
from sqlalchemy.dialects.postgresql import insert as pg_insert

from pipeline.models import (
    Event,
    OutboxMessage,
    OutboxStatus,
    RouteCursor,
    TopicCursorRow,
    WorkflowRun,
    outbox_status_is,
)
from pipeline.outbound.outbox_sql import MARK_SENT, lock_id

HISTORY = timedelta(minutes=5)
"""A new cursor starts with the topic's events of this long before it; replay runs older ones."""
PEEK_AHEAD = 16
"""A peek returns up to this many events after the cursor: a driver behind by several runs them
without a peek each (fewer round trips per event the further behind it is)."""

EVENT_COLUMNS = (
    Event.id,
    Event.cache,
    Event.topic,
    Event.topic_sequence_number,
    Event.epoch,
    Event.text,
    Event.event_timestamp,
    Event.publish_timestamp,
    Event.token_id,
    Event.received_at,
)

PEEK_CURSOR_COLUMNS = (
    "epoch",
    "seq",
    "event_id",
    "inflight_event_id",
    "inflight_since",
    "attempts",
    "retry_at",
)
"""The route cursor's columns a peek returns, first in each row (``ordering.Peek`` takes them)."""

_ROUTE: Any = bindparam("p_route")
_CACHE: Any = bindparam("p_cache")
_TOPIC: Any = bindparam("p_topic")
_THIS = and_(RouteCursor.route == _ROUTE, RouteCursor.cache == _CACHE, RouteCursor.topic == _TOPIC)


def _never_ran() -> Any:
    """The route has no run of the event (not started, not finished)."""
    return ~exists().where(WorkflowRun.route == _ROUTE, WorkflowRun.event_id == Event.id)


def _late_filter(cursor: Any) -> Any:
    """Of the events ``p_ids``, those behind ``cursor`` that never ran (they came too late)."""
    behind = or_(
        Event.epoch.is_(None),
        tuple_(Event.epoch, Event.topic_sequence_number, Event.id)
        <= tuple_(cursor.c.epoch, cursor.c.seq, cursor.c.event_id),
    )
    return and_(
        Event.id.in_(bindparam("p_ids", expanding=True)),
        Event.cache == cursor.c.cache,
        Event.topic == cursor.c.topic,
        Event.received_at >= cursor.c.created_at - HISTORY,
        behind,
        _never_ran(),
    )


def _peek_statement() -> Any:
    cursor = select(RouteCursor).where(_THIS).subquery("cursor")
    following = (
        select(*EVENT_COLUMNS)
        .where(
            Event.cache == _CACHE,
            Event.topic == _TOPIC,
            Event.epoch.is_not(None),
            tuple_(Event.epoch, Event.topic_sequence_number, Event.id)
            > tuple_(cursor.c.epoch, cursor.c.seq, cursor.c.event_id),
            Event.received_at >= cursor.c.created_at - HISTORY,
        )
        .order_by(Event.epoch, Event.topic_sequence_number, Event.id)
        .limit(PEEK_AHEAD)
        .lateral("following")
    )
    # Whether the key's oldest pending row is due to send (rows behind it wait for it).
    pending = func.coalesce(
        select(OutboxMessage.next_attempt_at <= func.now())
        .where(
            OutboxMessage.ordering_key == bindparam("p_key"),
            outbox_status_is(OutboxStatus.PENDING),
        )
        .order_by(OutboxMessage.id)
        .limit(1)
        .scalar_subquery(),
        False,
    )
    # Every row repeats the cursor's columns: only those a driver reads, the topic's state as
    # text (parsed once, not once per row), and the event's columns last, in EVENT_COLUMNS order.
    return (
        select(
            *(cursor.c[name] for name in PEEK_CURSOR_COLUMNS),
            func.now().label("now"),
            cast(TopicCursorRow.state, Text).label("state"),
            pending.label("pending"),
            *(column.label(f"e_{column.name}") for column in following.c),
        )
        .select_from(cursor)
        .outerjoin(
            TopicCursorRow,
            and_(TopicCursorRow.cache == cursor.c.cache, TopicCursorRow.topic == cursor.c.topic),
        )
        .outerjoin(following, true())
        .order_by(following.c.epoch, following.c.topic_sequence_number, following.c.id)
    )


def _move_statement(expect_inflight: bool) -> Update:
    event: tuple[Any, ...] = (bindparam("m_epoch"), bindparam("m_seq"), bindparam("m_event_id"))
    where = and_(
        _THIS, tuple_(RouteCursor.epoch, RouteCursor.seq, RouteCursor.event_id) < tuple_(*event)
    )
    if expect_inflight:
        where = and_(where, RouteCursor.inflight_event_id == event[2])
    return (
        update(RouteCursor)
        .where(where)
        .values(
            epoch=event[0],
            seq=event[1],
            event_id=event[2],
            inflight_event_id=None,
            inflight_since=None,
            attempts=0,
            retry_at=None,
            released=RouteCursor.released + 1,
            updated_at=func.now(),
        )
    )


def _skipped_ids() -> Any:
    """Events between the cursor's position before a move (``f_*``) and the event it moves to
    (``m_*``) that never ran.

    The cursor moves to the event a peek found next; one committed after that peek with a lower
    number (a number the sequencer had declared lost, arriving after all) would be passed over
    without running, so the statement moving the cursor returns those ids, to run late instead
    of never. Almost always empty. The caller bounds the sequence numbers (``p_lo``..``p_hi``:
    within one epoch, the two positions' numbers), as Postgres estimates row comparisons too
    poorly to pick the index for them.
    """
    start: tuple[Any, ...] = (bindparam("f_epoch"), bindparam("f_seq"), bindparam("f_event_id"))
    target: tuple[Any, ...] = (bindparam("m_epoch"), bindparam("m_seq"), bindparam("m_event_id"))
    position = tuple_(Event.epoch, Event.topic_sequence_number, Event.id)
    created = select(RouteCursor.created_at).where(_THIS).scalar_subquery()
    return (
        select(func.coalesce(func.array_agg(Event.id), cast(array([]), ARRAY(BigInteger))))
        .where(
            Event.cache == _CACHE,
            Event.topic == _TOPIC,
            Event.epoch.between(start[0], target[0]),
            Event.topic_sequence_number.between(bindparam("p_lo"), bindparam("p_hi")),
            position > tuple_(*start),
            position < tuple_(*target),
            Event.received_at >= created - HISTORY,
            _never_ran(),
        )
        .scalar_subquery()
    )


def _late_statement(where: Any) -> Any:
    cursor = select(RouteCursor).where(where).subquery("cursor")
    return select(Event.id).select_from(cursor).join(Event, _late_filter(cursor)).order_by(Event.id)


PEEK = _peek_statement()
LOCK_OR_POSITION = select(
    case(
        (func.pg_try_advisory_lock(lock_id(bindparam("p_key"))), None),
        else_=func.coalesce(
            select(array([RouteCursor.epoch, RouteCursor.seq, RouteCursor.event_id]))
            .where(_THIS)
            .scalar_subquery(),
            cast(array([]), ARRAY(BigInteger)),
        ),
    ).label("cursor")
)
"""Take a topic's driver lock (``cursor`` is NULL), or else read where its cursor stands
(``[epoch, seq, event_id]``, empty if it has none), so an ingest task that finds the topic busy
learns in one round trip whether any of its new events may have come too late. The cursor is
read only if the lock is taken by another."""
PEEK_AND_MARK = PEEK.add_cte(MARK_SENT.returning(OutboxMessage.id).cte("marked"))
"""PEEK that also marks rows sent (a driver's previous event's): one round trip, not two. Its
``pending`` column still sees those rows as pending; the driver ignores it inside its loop."""
MOVE = {expect: _move_statement(expect) for expect in (False, True)}
SKIPPED = _skipped_ids()
LATE = _late_statement(_THIS)
LATE_OF_ROUTE = _late_statement(RouteCursor.route == _ROUTE)
"""LATE for events of any of the route's topics (each event meets its own topic's cursor)."""
ENSURE = pg_insert(RouteCursor).values(route=_ROUTE, cache=_CACHE, topic=_TOPIC)
ENSURE = ENSURE.on_conflict_do_nothing()
INFLIGHT = (
    update(RouteCursor)
    .where(_THIS)
    .values(
        inflight_event_id=bindparam("p_event_id"), inflight_since=func.now(), updated_at=func.now()
    )
)
HOLD = (
    update(RouteCursor)
    .where(_THIS)
    .values(
        attempts=RouteCursor.attempts + 1,
        retry_at=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, bindparam("p_delay_s")),
        inflight_event_id=None,
        inflight_since=None,
        updated_at=func.now(),
    )
)
POSITION = select(RouteCursor.epoch, RouteCursor.seq, RouteCursor.event_id).where(_THIS)
LOAD = select(*EVENT_COLUMNS).where(Event.id == bindparam("p_event_id"))
