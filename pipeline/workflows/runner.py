"""The workflow stage: runs routes' workflows and commits each result with its outbox rows.

Unordered routes run one event per task, on any worker. Ordered routes are driven per topic by
``drive_topic``: whoever holds the topic's advisory lock runs the released events one after the
other (a task workflow in place; a canvas is started and its final callback, ``complete``, moves
the cursor and drives on), sending each result's outbox rows before the next event runs.
Failures are retried with backoff, then dead-lettered (kind "workflow") and skipped, so one bad
event cannot stall a topic forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from celery import Celery
from sqlalchemy import Connection, Engine

from pipeline.config import Settings
from pipeline.outbound.ordered_sender import OrderedSender
from pipeline.outbound.outbox_sql import try_lock, unlock
from pipeline.outbound.publisher import Publisher, SendReport
from pipeline.workflows import route_cursors as ordering
from pipeline.workflows.backpressure import LagReporter
from pipeline.workflows.outbox import (
    Committed,
    commit_result,
    dead_letter,
    ordering_key,
    outbox_rows,
    resolve_dead_letters,
)
from pipeline.workflows.results import event_view, parse_output, resolve_workflow
from pipeline.workflows.routes import Route, RouteTable
from pipeline.workflows.runs import backoff_s, dispatch_late

logger = logging.getLogger(__name__)

Outcome = Literal["done", "started", "retry", "dead", "missing"]
DRIVE_BUDGET_S = 20.0
"""A driver hands a busy topic to a fresh task after this long (tasks have a time limit)."""
INLINE_BUDGET_S = 1.0
"""An ingest task running a batch's workflows right after storing it hands the rest to tasks
after this long, so a busy topic does not hold up the next batches."""
Mode = Literal["ordered", "single", "replay"]
"""How a run was started: by an ordered cursor, on its own (unordered, or late), or by replay."""


@dataclass(frozen=True)
class Attempt:
    """A task workflow's run: its outbox rows, or why it failed and whether to retry."""

    rows: list[dict[str, Any]]
    error: str | None = None
    retry: bool = False


class WorkflowRunner:
    """Runs workflows for one process: routes, database, Celery app (by task name), publisher."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        routes: RouteTable,
        app: Celery,
        publisher: Publisher,
        lag: LagReporter | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.routes = routes
        self.app = app
        self.publisher = publisher
        self.sender = OrderedSender(publisher)
        self.lag = lag

    # -- one event: unordered routes, late events, replays ------------------------------------

    def run_event(self, route_name: str, event_id: int, *, mode: Mode, attempt: int) -> Outcome:
        """Run one event's workflow outside any cursor; "retry": try again after a backoff."""
        route = self.routes.get(route_name)
        with self.engine.connect() as conn:
            row = ordering.load_event(conn, event_id)
            conn.rollback()
            if row is None:
                logger.warning("event gone route=%s event=%d", route_name, event_id)
                return "missing"
            if not resolve_workflow(route.workflow).is_task:
                self.start_canvas(route, row, mode=mode)
                return "started"
            result = self.attempt(route, row)
            if result.error is not None:
                if result.retry and attempt + 1 < self.settings.pipeline_workflow_max_attempts:
                    return "retry"
                self.fail(route_name, event_id, result.error, mode=mode)
                return "dead"
            with conn.begin():
                committed = self._commit(conn, route, row, result.rows, mode=mode)
        self._sent(self.publisher.send_rows(committed.pending))
        return "done"

    def attempt(self, route: Route, row: Any) -> Attempt:
        """Call a task workflow here and turn its result into outbox rows."""
        event = event_view(row)
        try:
            value = resolve_workflow(route.workflow).call(event)
        except Exception as exc:  # user code: any failure is retried, then dead-lettered
            logger.warning("workflow failed route=%s event=%d error=%r", route.name, row.id, exc)
            return Attempt([], f"workflow raised {exc!r}", retry=True)
        try:
            return Attempt(outbox_rows(route, event, parse_output(value)))
        except ValueError as exc:  # a result no retry can make usable
            return Attempt([], f"bad workflow result: {exc}")

    def start_canvas(self, route: Route, row: Any, *, mode: Mode) -> None:
        """Start a canvas workflow with ``complete`` as its last step and ``failed`` on error."""
        args = (route.name, int(row.id), mode)
        canvas = resolve_workflow(route.workflow).canvas(event_view(row))
        chained = canvas | self.app.signature("tasks.workflows.complete", args=args)
        chained.link_error(self.app.signature("tasks.workflows.failed", args=args))
        chained.apply_async()

    def complete(self, result: Any, route_name: str, event_id: int, *, mode: Mode) -> None:
        """A canvas finished: commit the result and outbox rows (and move an ordered cursor)."""
        route = self.routes.get(route_name)
        with self.engine.begin() as conn:
            row = ordering.load_event(conn, event_id)
            if row is None:
                return
            try:
                rows = outbox_rows(route, event_view(row), parse_output(result))
            except ValueError as exc:
                conn.rollback()
                self.fail(route_name, event_id, f"bad workflow result: {exc}", mode=mode)
                return
            committed = self._commit(conn, route, row, rows, mode=mode, inflight=True)
            dispatch_late(self.app, conn, route_name, committed.skipped)
        if mode == "ordered":
            self.drive_topic(route, row.cache, row.topic)  # sends the rows, then runs the next
        else:
            self._sent(self.publisher.send_rows(committed.pending))

    def fail(
        self, route_name: str, event_id: int, reason: str, *, mode: Mode, inline: bool = False
    ) -> None:
        """Dead-letter a run that cannot succeed; an ordered topic moves on past it.

        ``inline``: the ordered driver itself gave up (it holds the topic and drives on); else a
        canvas failed, and the topic is driven on from here.
        """
        route = self.routes.get(route_name)
        with self.engine.begin() as conn:
            row = ordering.load_event(conn, event_id)
            payload: dict[str, Any] = {"route": route_name, "event_id": event_id}
            if row is not None:
                payload |= {
                    "cache": row.cache,
                    "topic": row.topic,
                    "seq": row.topic_sequence_number,
                }
            dead_letter(conn, "workflow", reason, payload)
            move = None
            if mode == "ordered" and row is not None:
                since = ordering.position(conn, route_name, row.cache, row.topic)
                move = ordering.move_cursor(
                    route_name, row, expect_inflight=not inline, since=since
                )
            skipped = commit_result(
                conn, route_name, event_id, [], key=None, run_status="failed", move=move
            ).skipped
            dispatch_late(self.app, conn, route_name, skipped)
        logger.warning("workflow dead route=%s event=%d reason=%s", route_name, event_id, reason)
        if not inline and mode == "ordered" and row is not None:
            self.drive_topic(route, row.cache, row.topic)

    def _commit(
        self,
        conn: Connection,
        route: Route,
        row: Any,
        rows: list[dict[str, Any]],
        *,
        mode: Mode,
        inflight: bool = False,
        mark_sent: Sequence[int] = (),
        since: ordering.Position | None = None,
    ) -> Committed:
        """Commit a run's result (``since``: where an ordered cursor stands, if known)."""
        move = None
        if mode == "ordered":
            if since is None:
                since = ordering.position(conn, route.name, row.cache, row.topic)
            move = ordering.move_cursor(route.name, row, expect_inflight=inflight, since=since)
        elif mode == "replay":
            resolve_dead_letters(conn, route.name, row.id)
        key = ordering_key(route, row.cache, row.topic) if mode == "ordered" else None
        return commit_result(
            conn,
            route.name,
            row.id,
            rows,
            key=key,
            revive=mode == "replay",
            move=move,
            mark_sent=mark_sent,
        )

    def _sent(self, report: SendReport) -> None:
        if report.retry_in_s is not None:
            self.app.send_task("tasks.publish.drain", countdown=report.retry_in_s)

    # -- ordered topics --------------------------------------------------------------------------

    def drive_topic(
        self,
        route: Route,
        cache: str,
        topic: str,
        new_ids: list[int] | None = None,
        budget_s: float = DRIVE_BUDGET_S,
        places: ordering.Places | None = None,
    ) -> int:
        """Run a topic's released events in order while this process holds the topic's lock.

        Returns how many ran; past ``budget_s`` the topic goes on in an ``advance`` task. After
        letting the lock go it looks once more for work, so an event released while it was
        finishing is never left waiting for the periodic sweep. Of ``new_ids``, those the cursor
        already passed (they arrived too late) run on their own; ``places``, where new events
        stand if known, spares asking about those plainly ahead of the cursor.
        """
        key = ordering.topic_key(route.name, cache, topic)
        ran = 0
        with self.engine.connect() as raw:
            conn = raw.execution_options(isolation_level="AUTOCOMMIT")
            while True:
                if new_ids:  # lock, or the late ones of new_ids, in one round trip
                    locked, late = ordering.lock_or_late(
                        conn, route.name, cache, topic, new_ids, places
                    )
                    if not locked:
                        dispatch_late(self.app, conn, route.name, late)
                        return ran
                elif not try_lock(conn, key):
                    return ran
                deadline = time.monotonic() + budget_s
                self.sender.begin()
                try:
                    new = new_ids or []
                    ran += self._drive_locked(conn, route, cache, topic, new, places, deadline)
                finally:
                    try:
                        self._settle_sends(conn, key)
                    finally:
                        unlock(conn, key)
                new_ids = None
                if time.monotonic() >= deadline:  # a long stream: go on in a fresh task
                    self.app.send_task("tasks.workflows.advance", args=(route.name, cache, topic))
                    return ran
                rows, at = self._next(conn, route, cache, topic)
                if not rows and not at.pending:
                    return ran

    def _next(
        self,
        conn: Connection,
        route: Route,
        cache: str,
        topic: str,
        mark_sent: Sequence[int] = (),
    ) -> tuple[Sequence[Any], ordering.Peek]:
        """The events to run now, in order (a stalled canvas's alone, to restart; none if none
        may run), and the cursor they were found at. ``mark_sent``: outbox rows to mark sent in
        the same statement."""
        at = ordering.peek(conn, route.name, cache, topic, mark_sent)
        if at is None:
            ordering.ensure_cursor(conn, route.name, cache, topic)
            at = ordering.peek(conn, route.name, cache, topic)
            assert at is not None
        if at.inflight_event_id is not None:
            since = at.inflight_since or at.now
            if (at.now - since).total_seconds() < self.settings.pipeline_workflow_stall_s:
                return (), at
            logger.warning("canvas stalled route=%s event=%d", route.name, at.inflight_event_id)
            stalled = ordering.load_event(conn, at.inflight_event_id)
            return ((stalled,) if stalled is not None else ()), at
        if at.retry_at is not None and at.retry_at > at.now:
            return (), at
        return at.events, at

    def _drive_locked(
        self,
        conn: Connection,
        route: Route,
        cache: str,
        topic: str,
        new_ids: list[int],
        places: ordering.Places | None,
        deadline: float,
    ) -> int:
        """Run released events under the lock, their rows sent by ``self.sender`` meanwhile.

        Each peek brings the next few released events; each commit marks the rows sent since
        the previous one, and each peek after the first all the rows sent so far. Of ``new_ids``
        (events just stored; ``places``: where they stand), those the cursor passed run late.
        """
        ran = 0
        is_task = resolve_workflow(route.workflow).is_task
        rows, at = self._next(conn, route, cache, topic)
        cursor = (at.epoch, at.seq, at.event_id)
        late = ordering.late_behind(conn, route.name, cache, topic, new_ids, places or {}, cursor)
        dispatch_late(self.app, conn, route.name, late)
        if at.pending:  # leftovers: a crash, a late run or a replay left rows to send first
            key = ordering.topic_key(route.name, cache, topic)
            self._sent(self.publisher.flush_key(conn, key))
        while rows:
            attempts = at.attempts  # the first event's; a moved cursor starts the next at 0
            since: ordering.Position = (at.epoch, at.seq, at.event_id)
            for row in rows:
                if not self._step(conn, route, row, since, attempts, is_task):
                    return ran
                ran += 1
                attempts = 0
                since = (row.epoch, row.topic_sequence_number, row.id)
                if time.monotonic() >= deadline:
                    return ran
            # Wait for the sends first: if this peek finds nothing more, the turn ends with
            # every row marked here, and settling it needs no statement of its own.
            rows, at = self._next(conn, route, cache, topic, mark_sent=self.sender.wait())
        return ran

    def _settle_sends(self, conn: Connection, key: str) -> None:
        """End a driver's turn: wait for its sends and mark them; if one failed, send the rest
        here, the way that records retries and dead letters.

        The marks must be committed before the unlock, in a statement of their own: an advisory
        unlock takes effect at once, not at commit, so marking in the unlock statement would let
        the next holder see the rows still pending and send them again (tried: 2 duplicates in
        4,000 at 200/s).
        """
        self.publisher.mark_sent(conn, self.sender.wait())
        if self.sender.failed:
            self._sent(self.publisher.flush_key(conn, key))

    def _step(
        self,
        conn: Connection,
        route: Route,
        row: Any,
        since: ordering.Position,
        attempts: int,
        is_task: bool,
    ) -> bool:
        """Run the topic's next event under the lock: False if the topic must wait now (its
        canvas started, it failed and is held for a retry, or a send failed)."""
        if self.lag is not None:  # a driver falling behind asks receivers for bigger batches
            self.lag.observe(row.received_at)
        if not is_task:
            ordering.mark_inflight(conn, route.name, row)
            self.start_canvas(route, row, mode="ordered")
            return False
        result = self.attempt(route, row)
        if result.error is None:
            committed = self._commit(
                conn,
                route,
                row,
                result.rows,
                mode="ordered",
                mark_sent=self.sender.sent(),
                since=since,
            )
            dispatch_late(self.app, conn, route.name, committed.skipped)
            self.sender.submit(committed.pending)
            return not self.sender.failed
        if result.retry and attempts + 1 < self.settings.pipeline_workflow_max_attempts:
            delay_s = backoff_s(attempts + 1)
            ordering.hold_for_retry(conn, route.name, row, delay_s)
            args = (route.name, row.cache, row.topic)
            self.app.send_task("tasks.workflows.advance", args=args, countdown=delay_s)
            return False
        self.fail(route.name, row.id, result.error or "", mode="ordered", inline=True)
        return True
