"""Hand stored events to the workflow stage, and find the ones a crash kept from it.

``dispatch_stored`` runs after an ingest transaction committed: unordered routes get one
``tasks.workflows.run`` per event (recorded in workflow_runs first, so each is sent once), ordered
routes one ``tasks.workflows.advance`` per topic. A worker can die between the ingest commit and
this hand-over, so ``sweep`` (run by beat) dispatches recent events that have no run yet, restarts
runs that stalled, and nudges every ordered topic that has work.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta

from celery import Celery
from prometheus_client import Counter
from sqlalchemy import Connection, Engine, and_, exists, func, or_, select, tuple_, update
from sqlalchemy.sql.elements import ColumnElement

from pipeline.config import Settings
from pipeline.db import get_engine
from pipeline.ingest import StoreResult
from pipeline.models import Event, RouteCursor, TopicCursorRow, WorkflowRun
from pipeline.routes import Route, RouteTable, routes_for
from pipeline.runner import claim_runs

logger = logging.getLogger(__name__)

UNROUTED_EVENTS = Counter(
    "pipeline_unrouted_events", "Stored events that no route matched (kept, not an error)."
)
DISPATCHED = Counter(
    "pipeline_workflow_dispatches", "Workflow runs handed over, by kind.", ["kind"]
)

SWEEP_WINDOW = timedelta(hours=1)
"""Events received longer ago than this are left to `pipeline replay`."""
SWEEP_GRACE = timedelta(seconds=5)
"""Younger events are still being dispatched by the worker that stored them."""


def glob_regex(glob: str) -> str:
    """An anchored POSIX regex for an fnmatch glob (for matching routes in SQL)."""
    out, i = ["^"], 0
    while i < len(glob):
        ch = glob[i]
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[" and "]" in glob[i + 2 :]:
            end = glob.index("]", i + 2)
            body = glob[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append("\\" + ch if ch in ".^$+?(){}|\\[]" else ch)
        i += 1
    return "".join(out) + "$"


def _route_filter(route: Route) -> ColumnElement[bool]:
    return and_(
        Event.cache.regexp_match(glob_regex(route.cache)),
        Event.topic.regexp_match(glob_regex(route.topic)),
    )


def dispatch_stored(app: Celery, engine: Engine, routes: RouteTable, result: StoreResult) -> int:
    """Hand a committed batch's new events to the workflow stage; returns tasks sent."""
    if not result.new_ids:
        return 0
    matched = {topic: routes.matching(*topic) for topic in result.topics}
    sent = 0
    for (cache, topic), found in sorted(matched.items()):
        for route in found:
            if route.ordered:
                app.send_task("tasks.workflows.advance", args=(route.name, cache, topic))
                sent += 1
    unordered = any(not r.ordered for found in matched.values() for r in found)
    if not unordered and all(matched.values()):
        DISPATCHED.labels("ordered").inc(sent)
        return sent
    with engine.begin() as conn:
        rows = conn.execute(
            select(Event.id, Event.cache, Event.topic).where(Event.id.in_(result.new_ids))
        ).all()
        pairs = [
            (route.name, row.id)
            for row in rows
            for route in matched.get((row.cache, row.topic), ())
            if not route.ordered
        ]
        UNROUTED_EVENTS.inc(sum(1 for row in rows if not matched.get((row.cache, row.topic))))
        claimed = claim_runs(conn, pairs, again=False)
    for route_name, event_id in claimed:
        app.send_task("tasks.workflows.run", args=(route_name, event_id))
    DISPATCHED.labels("unordered").inc(len(claimed))
    return sent + len(claimed)


def hand_over(settings: Settings, result: StoreResult) -> int:
    """``dispatch_stored`` with this process's app, engine and routes (called by tasks.ingest)."""
    from pipeline.celery_app import app

    return dispatch_stored(app, get_engine(settings), routes_for(settings), result)


def sweep(
    app: Celery, engine: Engine, routes: RouteTable, stall: timedelta, limit: int = 1000
) -> dict[str, int]:
    """Dispatch what a crash kept from the workflow stage; returns counts by kind."""
    counts: dict[str, int] = defaultdict(int)
    with engine.begin() as conn:
        for route in routes:
            if route.ordered:
                for cache, topic in _ordered_topics(conn, route):
                    app.send_task("tasks.workflows.advance", args=(route.name, cache, topic))
                    counts["topics"] += 1
                continue
            for event_id in _undispatched(conn, route, limit):
                if claim_runs(conn, [(route.name, event_id)], again=False):
                    app.send_task("tasks.workflows.run", args=(route.name, event_id))
                    counts["undispatched"] += 1
        stalled = conn.execute(
            update(WorkflowRun)
            .where(WorkflowRun.status == "running", WorkflowRun.started_at < func.now() - stall)
            .values(started_at=func.now())
            .returning(WorkflowRun.route, WorkflowRun.event_id)
        ).all()
    for row in stalled:
        app.send_task("tasks.workflows.run", args=(row.route, row.event_id))
        counts["stalled"] += 1
    if any(counts.values()):
        logger.info("sweep %s", " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return dict(counts)


def _undispatched(conn: Connection, route: Route, limit: int) -> list[int]:
    no_run = ~exists().where(WorkflowRun.route == route.name, WorkflowRun.event_id == Event.id)
    rows = conn.execute(
        select(Event.id)
        .where(
            Event.received_at > func.now() - SWEEP_WINDOW,
            Event.received_at < func.now() - SWEEP_GRACE,
            _route_filter(route),
            no_run,
        )
        .order_by(Event.id)
        .limit(limit)
    ).scalars()
    return list(rows)


def _ordered_topics(conn: Connection, route: Route) -> list[tuple[str, str]]:
    """Recently active topics of an ordered route whose cursor may have work to do."""
    cursor = select(RouteCursor).where(RouteCursor.route == route.name).subquery("cursor")
    ahead = exists().where(
        Event.cache == TopicCursorRow.cache,
        Event.topic == TopicCursorRow.topic,
        Event.epoch.is_not(None),
        tuple_(Event.epoch, Event.topic_sequence_number, Event.id)
        > tuple_(cursor.c.epoch, cursor.c.seq, cursor.c.event_id),
    )
    rows = conn.execute(
        select(TopicCursorRow.cache, TopicCursorRow.topic)
        .outerjoin(
            cursor,
            and_(cursor.c.cache == TopicCursorRow.cache, cursor.c.topic == TopicCursorRow.topic),
        )
        .where(
            TopicCursorRow.newest_received_at > func.now() - SWEEP_WINDOW,
            TopicCursorRow.cache.regexp_match(glob_regex(route.cache)),
            TopicCursorRow.topic.regexp_match(glob_regex(route.topic)),
            or_(
                cursor.c.route.is_(None),
                cursor.c.inflight_event_id.is_not(None),
                cursor.c.retry_at.is_not(None),
                ahead,
            ),
        )
    ).all()
    return [(row.cache, row.topic) for row in rows]
