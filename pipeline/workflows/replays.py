"""Replays: choose stored events and run routes' workflows on them again.

Shared by `pipeline replay` and the dashboard's dead-letter page, so both follow one rule: runs
are chosen by cache/topic glob, time and sequence range, or by unresolved dead letters, recorded
in workflow_runs, and sent to the workers like any run. Results go through the outbox, so a sent
or pending row is never sent again and a dead one is revived and sent once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, select

from pipeline.models import DeadLetter, Event
from pipeline.workflows.routes import RouteTable
from pipeline.workflows.runs import claim_runs
from pipeline.workflows.templates import glob_regex

if TYPE_CHECKING:
    from celery import Celery

BATCH = 200


@dataclass(frozen=True)
class Selection:
    """Which stored events to replay, and for which routes."""

    routes: tuple[str, ...] = ()
    cache: str | None = None
    topic: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    from_seq: int | None = None
    to_seq: int | None = None
    dead_letters: bool = False
    letter_ids: tuple[int, ...] = ()
    """With ``dead_letters``: only these dead letters (empty: every unresolved one)."""
    limit: int | None = None


def select_runs(conn: Connection, table: RouteTable, chosen: Selection) -> list[tuple[str, int]]:
    """(route, event id) pairs to replay, in event order."""
    query = select(Event.id, Event.cache, Event.topic).order_by(Event.id)
    if chosen.cache:
        query = query.where(Event.cache.regexp_match(glob_regex(chosen.cache)))
    if chosen.topic:
        query = query.where(Event.topic.regexp_match(glob_regex(chosen.topic)))
    if chosen.since:
        query = query.where(Event.received_at >= chosen.since)
    if chosen.until:
        query = query.where(Event.received_at < chosen.until)
    if chosen.from_seq is not None:
        query = query.where(Event.topic_sequence_number >= chosen.from_seq)
    if chosen.to_seq is not None:
        query = query.where(Event.topic_sequence_number <= chosen.to_seq)
    dead: set[tuple[str, int]] | None = None
    if chosen.dead_letters:
        dead = dead_letter_pairs(conn, chosen.letter_ids)
        query = query.where(Event.id.in_({event_id for _, event_id in dead}))
    pairs = []
    for row in conn.execute(query):
        for route in table.matching(row.cache, row.topic):
            if chosen.routes and route.name not in chosen.routes:
                continue
            if dead is not None and (route.name, row.id) not in dead:
                continue
            pairs.append((route.name, int(row.id)))
            if chosen.limit is not None and len(pairs) >= chosen.limit:
                return pairs
    return pairs


def dead_letter_pairs(conn: Connection, ids: tuple[int, ...] = ()) -> set[tuple[str, int]]:
    """(route, event id) of unresolved workflow or publish dead letters (``ids``: only those)."""
    query = select(DeadLetter.payload).where(
        DeadLetter.kind.in_(("workflow", "publish")), DeadLetter.resolved_at.is_(None)
    )
    if ids:
        query = query.where(DeadLetter.id.in_(ids))
    rows = conn.execute(query).scalars()
    pairs = set()
    for payload in rows:
        route, event_id = payload.get("route"), payload.get("event_id")
        if isinstance(route, str) and isinstance(event_id, int):
            pairs.add((route, event_id))
    return pairs


def dispatch_replays(engine: Engine, app: Celery, pairs: list[tuple[str, int]]) -> int:
    """Record the runs, then send them to the workers; returns how many were sent."""
    with engine.begin() as conn:
        claimed = claim_runs(conn, pairs, again=True)
    for route, event_id in claimed:
        app.send_task("tasks.workflows.run", args=(route, event_id, "replay"))
    return len(claimed)
