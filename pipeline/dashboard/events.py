"""Finding events and following one through the pipeline: its body, route runs and outbox rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Row, select

from pipeline.models import DeadLetter, Event, OutboxMessage, WorkflowRun
from pipeline.workflows.templates import glob_regex

PAGE_SIZE = 100
EVENTS = Event.__table__


@dataclass(frozen=True, slots=True)
class EventQuery:
    """A search: cache/topic globs, a sequence range, a received-at range and a text fragment."""

    cache: str | None = None
    topic: str | None = None
    from_seq: int | None = None
    to_seq: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None
    limit: int = PAGE_SIZE


def search_events(engine: Engine, query: EventQuery) -> list[Row[Any]]:
    """Matching events, newest first, at most ``query.limit``."""
    stmt = select(EVENTS).order_by(Event.id.desc()).limit(query.limit)
    if query.cache:
        stmt = stmt.where(Event.cache.regexp_match(glob_regex(query.cache)))
    if query.topic:
        stmt = stmt.where(Event.topic.regexp_match(glob_regex(query.topic)))
    if query.from_seq is not None:
        stmt = stmt.where(Event.topic_sequence_number >= query.from_seq)
    if query.to_seq is not None:
        stmt = stmt.where(Event.topic_sequence_number <= query.to_seq)
    if query.since is not None:
        stmt = stmt.where(Event.received_at >= query.since)
    if query.until is not None:
        stmt = stmt.where(Event.received_at < query.until)
    if query.text:
        stmt = stmt.where(Event.text.contains(query.text, autoescape=True))
    with engine.connect() as conn:
        return list(conn.execute(stmt).all())


@dataclass(frozen=True, slots=True)
class Trace:
    """Everything the pipeline did with one event."""

    event: Row[Any]
    runs: list[Row[Any]]
    outbox: list[Row[Any]]
    dead_letters: list[Row[Any]]


def event_trace(engine: Engine, event_id: int) -> Trace | None:
    """The event, its route runs, its outbox rows (with sent times) and its dead letters."""
    with engine.connect() as conn:
        event = conn.execute(select(EVENTS).where(Event.id == event_id)).first()
        if event is None:
            return None
        runs = conn.execute(
            select(WorkflowRun.__table__)
            .where(WorkflowRun.event_id == event_id)
            .order_by(WorkflowRun.route)
        ).all()
        outbox = conn.execute(
            select(OutboxMessage.__table__)
            .where(OutboxMessage.event_id == event_id)
            .order_by(OutboxMessage.id)
        ).all()
        letters = conn.execute(
            select(DeadLetter.__table__)
            .where(DeadLetter.payload["event_id"].astext == str(event_id))
            .order_by(DeadLetter.id)
        ).all()
    return Trace(event=event, runs=list(runs), outbox=list(outbox), dead_letters=list(letters))
