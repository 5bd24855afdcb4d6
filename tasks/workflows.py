"""Workflow-stage tasks: run routes' workflows, finish canvases, restart what stalled."""

from __future__ import annotations

import sys
from datetime import timedelta
from functools import cache
from typing import Any

from celery import Task
from celery.signals import worker_init

from pipeline.celery_app import app
from pipeline.config import get_settings
from pipeline.db import get_engine
from pipeline.errors import RoutesError
from pipeline.outbound.publisher import Publisher
from pipeline.stores import broker_url
from pipeline.workflows import advance_marks
from pipeline.workflows.backpressure import LagReporter
from pipeline.workflows.dispatch import sweep as sweep_stalled
from pipeline.workflows.route_cursors import Places, topic_key
from pipeline.workflows.routes import Route, routes_for
from pipeline.workflows.runner import INLINE_BUDGET_S, Mode, WorkflowRunner
from pipeline.workflows.runs import backoff_s
from tasks.retry import UNTIL_DONE


@worker_init.connect
def _check_routes(**_: Any) -> None:
    """A bad routes file stops the worker at start (Celery logs other signal errors and goes on)."""
    try:
        routes_for(get_settings())
    except RoutesError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from exc


@cache
def runner() -> WorkflowRunner:
    """This process's runner (built on first use, so after the prefork pool forked)."""
    settings = get_settings()
    engine = get_engine(settings)
    publisher = Publisher(settings, engine)
    lag = LagReporter(broker_url(settings))
    return WorkflowRunner(settings, engine, routes_for(settings), app, publisher, lag)


@app.task(bind=True, name="tasks.workflows.run", **UNTIL_DONE)
def run(self: Task, route: str, event_id: int, mode: Mode = "single") -> str:
    """Run one event's workflow on its own: unordered routes, late events, replays."""
    outcome = runner().run_event(route, event_id, mode=mode, attempt=self.request.retries)
    if outcome == "retry":
        delay_s = backoff_s(self.request.retries + 1)
        raise self.retry(countdown=delay_s, max_retries=None)
    return outcome


@app.task(name="tasks.workflows.advance", **UNTIL_DONE)
def advance(route: str, cache: str, topic: str, new_ids: list[int] | None = None) -> int:
    """Run an ordered route's released events of one topic, in order; returns how many ran."""
    # Cleared before the driver looks: events stored from now on get another advance.
    advance_marks.clear(broker_url(get_settings()), topic_key(route, cache, topic))
    stage = runner()
    return stage.drive_topic(stage.routes.get(route), cache, topic, new_ids)


def serves_workflows() -> bool:
    """Whether this worker consumes the workflows queue (``-Q`` may leave it to other workers)."""
    return "workflows" in app.amqp.queues.consume_from


def drive_here(route: Route, cache: str, topic: str, new_ids: list[int], places: Places) -> int:
    """Drive an ordered topic in this process right after its events were stored (no hop)."""
    return runner().drive_topic(route, cache, topic, new_ids, INLINE_BUDGET_S, places)


def run_here(route: str, event_id: int) -> None:
    """Run an unordered route's event in this process right after it was stored (no hop)."""
    if runner().run_event(route, event_id, mode="single", attempt=0) == "retry":
        # Its first attempt is spent: the task goes on from the second.
        app.send_task(
            "tasks.workflows.run", args=(route, event_id), countdown=backoff_s(1), retries=1
        )


@app.task(name="tasks.workflows.complete", **UNTIL_DONE)
def complete(result: Any, route: str, event_id: int, mode: Mode) -> None:
    """Last step of every canvas workflow: commit its result with the outbox rows."""
    runner().complete(result, route, event_id, mode=mode)


@app.task(name="tasks.workflows.failed", **UNTIL_DONE)
def failed(
    request: Any, exc: BaseException, traceback: Any, route: str, event_id: int, mode: Mode
) -> None:
    """Error callback of a canvas workflow: dead-letter the run (an ordered topic moves on)."""
    runner().fail(route, event_id, f"canvas failed: {exc!r}", mode=mode)


@app.task(name="tasks.workflows.sweep", acks_late=True, expires=30, ignore_result=True)
def sweep() -> dict[str, int]:
    """Beat: restart runs that stalled and nudge ordered topics that have work."""
    stage = runner()
    stall = timedelta(seconds=stage.settings.pipeline_workflow_stall_s)
    return sweep_stalled(app, stage.engine, stage.routes, stall)
