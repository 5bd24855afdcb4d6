"""Hand stored events to the workflow stage; recover hand-overs and runs a crash interrupted.

``dispatch_stored`` runs after an ingest transaction committed: unordered routes get one
``tasks.workflows.run`` per event (recorded in workflow_runs first, so each is sent once). Ordered
topics are driven right there when the worker also serves the workflows queue (no broker hop: the
lowest latency), else handed over as one ``tasks.workflows.advance`` per topic; either way with the
batch's event ids, so events that arrived too late for their place in the order still run. A worker
that dies between the commit and the hand-over leaves its ingest message unacknowledged; the broker
redelivers it, the batch is recognised as stored, and its events are handed over again
(idempotently). ``sweep`` (beat) restarts runs that stalled and nudges ordered topics whose cursor
has work.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Protocol

from celery import Celery
from prometheus_client import Counter
from sqlalchemy import Connection, Engine, and_, exists, func, or_, select, tuple_, update

from pipeline.config import Settings, get_settings
from pipeline.db import get_engine
from pipeline.models import Event, RouteCursor, TopicCursorRow, WorkflowRun
from pipeline.outbound.outbox_sql import free_keys
from pipeline.stores import broker_url
from pipeline.workflows import advance_marks
from pipeline.workflows.route_cursors import Places, late_events_of_route, topic_key
from pipeline.workflows.routes import Route, RouteTable, routes_for
from pipeline.workflows.runner import INLINE_BUDGET_S
from pipeline.workflows.runs import claim_runs, dispatch_late
from pipeline.workflows.templates import glob_regex

logger = logging.getLogger(__name__)

UNROUTED_EVENTS = Counter(
    "pipeline_unrouted_events", "Stored events that no route matched (kept, not an error)."
)
DISPATCHED = Counter(
    "pipeline_workflow_dispatches", "Workflow runs handed over, by kind.", ["kind"]
)

Drive = Callable[[Route, str, str, list[int], Places], int]
"""Runs an ordered topic's released events here: (route, cache, topic, new event ids, where
they stand) -> ran."""
Run = Callable[[str, int], None]
"""Runs one event of an unordered route here: (route name, event id)."""

ACTIVE_WINDOW = timedelta(hours=1)
"""Ordered topics quiet for longer are not nudged by the sweep."""


class Stored(Protocol):
    """What the hand-over needs of a stored batch (``pipeline.ingest.store.StoreResult``)."""

    @property
    def new_ids(self) -> Sequence[int]: ...
    @property
    def places(self) -> Places: ...
    @property
    def by_topic(self) -> Mapping[tuple[str, str], Sequence[int]]: ...
    @property
    def replayed(self) -> bool: ...
    @property
    def keys(self) -> Sequence[tuple[str, str, str]]: ...


def batch_event_ids(conn: Connection, keys: Sequence[tuple[str, str, str]]) -> list[int]:
    """Ids of a (redelivered) receiver batch's stored events, found by their natural keys."""
    if not keys:
        return []
    found = conn.execute(
        select(Event.id).where(tuple_(Event.cache, Event.topic, Event.idempotency_key).in_(keys))
    ).scalars()
    return list(found)


def dispatch_stored(
    app: Celery,
    engine: Engine,
    routes: RouteTable,
    result: Stored,
    drive: Drive | None = None,
    run: Run | None = None,
) -> int:
    """Hand a committed batch's new events (all its events, if redelivered) to the workflows.

    With ``drive``, ordered topics are driven in this process instead of by an ``advance`` task;
    with ``run``, unordered runs are done here (for up to INLINE_BUDGET_S) instead of by ``run``
    tasks. Returns the tasks sent; work done here counts as dispatches of kind "inline".
    """
    if not routes.routes or not (result.new_ids or result.replayed):
        UNROUTED_EVENTS.inc(len(result.new_ids))
        return 0
    by_topic = _by_topic(engine, result)
    matched = {topic: routes.matching(*topic) for topic in by_topic}
    pairs = [
        (route.name, event_id)
        for topic, event_ids in by_topic.items()
        for route in matched[topic]
        if not route.ordered
        for event_id in event_ids
    ]
    claimed: list[tuple[str, int]] = []
    if pairs:
        with engine.begin() as conn:
            claimed = claim_runs(conn, pairs, again=False)
    UNROUTED_EVENTS.inc(sum(len(by_topic[t]) for t, found in matched.items() if not found))
    inline = unordered = ordered_sent = 0
    deadline = time.monotonic() + INLINE_BUDGET_S
    for route_name, event_id in claimed:
        if run is not None and time.monotonic() < deadline and _ran_here(run, route_name, event_id):
            inline += 1
        else:
            app.send_task("tasks.workflows.run", args=(route_name, event_id))
            unordered += 1
    ordered = [
        (route, topic)
        for topic, found in sorted(matched.items())
        for route in found
        if route.ordered
    ]
    if ordered and drive is not None:
        for route, (cache, topic) in ordered:
            drive(route, cache, topic, by_topic[(cache, topic)], result.places)
            inline += 1
    elif ordered:
        by_route: dict[str, tuple[Route, dict[tuple[str, str], list[int]]]] = {}
        for route, place in ordered:
            by_route.setdefault(route.name, (route, {}))[1][place] = by_topic[place]
        with engine.connect() as raw:
            conn = raw.execution_options(isolation_level="AUTOCOMMIT")
            for route, topics in by_route.values():
                ordered_sent += nudge(app, conn, route, topics)
    DISPATCHED.labels("unordered").inc(unordered)
    DISPATCHED.labels("ordered").inc(ordered_sent)
    DISPATCHED.labels("inline").inc(inline)
    sent = unordered + ordered_sent
    if result.replayed and sent:
        logger.info("redelivered batch handed over again tasks=%d", sent)
    return sent


def _ran_here(run: Run, route: str, event_id: int) -> bool:
    """Run an unordered event here; False (send it as a task instead) if that failed."""
    try:
        run(route, event_id)
    except Exception:  # the task path retries and reports it; the ingest task goes on
        logger.warning("inline run failed, sending a task route=%s event=%d", route, event_id)
        return False
    return True


def nudge(
    app: Celery, conn: Connection, route: Route, topics: Mapping[tuple[str, str], list[int]]
) -> int:
    """Get an ordered route's new events run, for all the batch's topics at once: send
    ``advance`` for each topic no driver is at work on. Returns tasks sent.

    A driver that holds a topic's lock finds events committed before this check, either in its
    loop or in the look it takes after letting the lock go, so no task is needed; only the events
    it already passed (late ones) are handed over here. The same holds while an advance is
    already on its way (``advance_marks``). One round trip each to Postgres (which locks are
    free), the broker (which topics have no advance on the way) and Postgres again (which events
    came late), whatever the number of topics: during a backlog a batch spans many topics, and
    asking per topic was most of an ingest task's time.
    """
    keys = {topic: topic_key(route.name, *topic) for topic in topics}
    free = free_keys(conn, list(keys.values()))
    wanted = advance_marks.mark(broker_url(get_settings()), [k for k in keys.values() if k in free])
    sent = 0
    others: list[int] = []
    for (cache, topic), key in keys.items():
        if key in wanted:
            ids = topics[(cache, topic)]
            app.send_task("tasks.workflows.advance", args=(route.name, cache, topic, ids))
            sent += 1
        else:  # an advance is on its way, or a driver at work: only late ones are left
            others.extend(topics[(cache, topic)])
    return sent + dispatch_late(
        app, conn, route.name, late_events_of_route(conn, route.name, others)
    )


def _by_topic(engine: Engine, result: Stored) -> dict[tuple[str, str], list[int]]:
    """The batch's event ids by topic: as inserted, or looked up for a redelivered batch."""
    if not result.replayed:
        return {topic: list(ids) for topic, ids in result.by_topic.items()}
    by_topic: dict[tuple[str, str], list[int]] = defaultdict(list)
    with engine.connect() as conn:
        ids = batch_event_ids(conn, result.keys)
        rows = conn.execute(select(Event.id, Event.cache, Event.topic).where(Event.id.in_(ids)))
        for row in rows:
            by_topic[(row.cache, row.topic)].append(row.id)
    return by_topic


def hand_over(
    settings: Settings,
    result: Stored,
    drive: Drive | None = None,
    run: Run | None = None,
) -> int:
    """``dispatch_stored`` with this process's app, engine and routes (called by tasks.ingest)."""
    from pipeline.celery_app import app

    engine = get_engine(settings)
    return dispatch_stored(app, engine, routes_for(settings), result, drive, run)


def sweep(app: Celery, engine: Engine, routes: RouteTable, stall: timedelta) -> dict[str, int]:
    """Restart runs that stalled and nudge ordered topics with work; returns counts by kind."""
    counts: dict[str, int] = defaultdict(int)
    with engine.begin() as conn:
        stalled = conn.execute(
            update(WorkflowRun)
            .where(WorkflowRun.status == "running", WorkflowRun.started_at < func.now() - stall)
            .values(started_at=func.now())
            .returning(WorkflowRun.route, WorkflowRun.event_id)
        ).all()
        topics = [
            (route.name, cache, topic)
            for route in routes
            if route.ordered
            for cache, topic in _ordered_topics(conn, route)
        ]
    for row in stalled:
        app.send_task("tasks.workflows.run", args=(row.route, row.event_id))
        counts["stalled"] += 1
    for args in topics:
        app.send_task("tasks.workflows.advance", args=args)
        counts["topics"] += 1
    if stalled:
        logger.info("sweep restarted stalled runs count=%d", len(stalled))
    return dict(counts)


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
            TopicCursorRow.newest_received_at > func.now() - ACTIVE_WINDOW,
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
