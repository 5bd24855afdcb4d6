"""Ingest tasks: store batches from the doors in Postgres, then hand new events to the sequencer.

``store_webhooks`` takes the receiver's batches, ``store_subscribed`` the listener's
(``pipeline.sources``); both take the same path from here on.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

import kombu.exceptions
import redis
from celery import Task
from celery.signals import worker_init
from celery.utils.log import get_task_logger
from sqlalchemy.exc import PendingRollbackError

from pipeline.celery_app import app
from pipeline.config import Settings, get_settings
from pipeline.db import transaction
from pipeline.ingest.ledger import oldest_received_ms, sequencing_horizon, settle_stored
from pipeline.ingest.store import RowsOf, StoreResult, dead_letter, store_batch, webhook_rows
from pipeline.sequencing.store import policy_from
from pipeline.sources.items import subscription_rows
from pipeline.stores import broker_url
from pipeline.workflows.dispatch import hand_over
from tasks.retry import DB_ERRORS
from tasks.workflows import drive_here, run_here, serves_workflows

logger = get_task_logger(__name__)

TRANSIENT = (*DB_ERRORS, PendingRollbackError, redis.RedisError, kombu.exceptions.OperationalError)
"""Postgres or the broker is unreachable (or a connection it dropped is being rolled back)."""
BACKOFF_MAX_S = 2.0
"""Longest wait between tries while a store is down: a try costs one failed connection, and a
short wait lets the backlog drain within seconds of the store's return."""
POISON_AFTER = 3
"""Other failures in a row after which a batch is dead-lettered: the same input fails again."""
WAITED_S = 1.0
"""A batch received longer ago than this found a backlog: its workflows are not run inline."""
TASK_OPTIONS: dict[str, Any] = {"bind": True, "acks_late": True, "reject_on_worker_lost": True}


@worker_init.connect
def _ingest_events(**_: Any) -> None:
    """Monitoring events for ingest batches only when asked (PIPELINE_INGEST_TASK_EVENTS).

    Each task costs its worker three synchronous broker round trips of events (received, started,
    succeeded): on the hot path, with one batch per few events at low rates, that was 40% of a
    worker's consumer process. Ingest is counted on the receiver's /metrics instead; the
    workflow, publish and aggregate tasks still show in Flower.
    """
    send_events = get_settings().pipeline_ingest_task_events
    store_webhooks.send_events = store_subscribed.send_events = send_events


@app.task(name="tasks.ingest.store_webhooks", **TASK_OPTIONS)
def store_webhooks(self: Task, items: list[list[Any]]) -> dict[str, int]:
    """Store one receiver batch of ``[raw body, received ms]`` items (see ``store_items``)."""
    return store_items(self.request.id, items, webhook_rows)


@app.task(name="tasks.ingest.store_subscribed", **TASK_OPTIONS)
def store_subscribed(self: Task, items: list[list[Any]]) -> dict[str, int]:
    """Store one listener batch of subscription items (``pipeline.sources.items``)."""
    return store_items(self.request.id, items, subscription_rows)


class Stored(Protocol):
    """What storing a batch reports (``StoreResult``, or a change batch's result)."""

    new_ids: list[int]
    duplicates: int
    dead: int
    replayed: bool


Store = Callable[[Settings, str, list[list[Any]], str], Stored]
"""Stores a batch and hands it on: (settings, broker, items, batch id) -> what it did."""


def store_items(
    batch_id: str,
    items: list[list[Any]],
    rows_of: RowsOf | None = None,
    store: Store | None = None,
) -> dict[str, int]:
    """Store a batch (``store``, by default the webhook/subscription path with ``rows_of``);
    waits in place while a store is down.

    The task keeps its broker message while it waits instead of re-sending itself (Celery's
    retry would): the batch keeps its place in the queue's order, and stays held by this live
    worker (``pipeline.ingest.held_deliveries``), so nothing else runs it meanwhile. A batch that
    fails ``POISON_AFTER`` times in a row for any other reason is dead-lettered whole: the same
    input would fail again.
    """
    settings = get_settings()
    broker = broker_url(settings)
    failures = 0
    for attempt in itertools.count():
        try:
            if store is None:
                result: Stored = _store_and_hand_over(settings, broker, items, batch_id, rows_of)
            else:
                result = store(settings, broker, items, batch_id)
            break
        except TRANSIENT as exc:  # a store is down: wait for it, however long
            delay_s = random.uniform(0.5, 1.0) * min(BACKOFF_MAX_S, 2.0**attempt)
            logger.warning("batch waits for its stores id=%s retry_in=%.1fs error=%s",
                           batch_id, delay_s, type(exc).__name__)  # fmt: skip
            time.sleep(delay_s)
        except Exception as exc:
            failures += 1
            if failures >= POISON_AFTER:
                _dead_letter_batch(settings, broker, items, batch_id, exc)
                return {"new": 0, "duplicates": 0, "dead": len(items)}
            logger.warning("batch failed, trying again id=%s error=%r", batch_id, exc)
            time.sleep(0.2 * failures)
    if result.replayed:
        logger.info("batch already stored id=%s", batch_id)
        return {"new": 0, "duplicates": 0, "dead": 0}
    logger.info(
        "stored batch=%d new=%d dup=%d dead=%d",
        len(items),
        len(result.new_ids),
        result.duplicates,
        result.dead,
    )
    return {"new": len(result.new_ids), "duplicates": result.duplicates, "dead": result.dead}


def _store_and_hand_over(
    settings: Settings, broker: str, items: list[list[Any]], batch_id: str, rows_of: RowsOf | None
) -> StoreResult:
    hold_s = settings.pipeline_backlog_hold_s

    def horizon() -> int | None:  # batches received earlier but still queued keep gaps open
        return sequencing_horizon(broker, hold_s, batch_id)

    result = store_batch(settings, items, policy_from(settings), batch_id, horizon, rows_of)
    # After the commit, events go to the workflow stage: a worker that also serves the workflows
    # queue runs them itself, saving a broker hop and a task; a dedicated one hands them over.
    # So does a batch that waited (an ingest backlog, Postgres back after an outage): driving
    # its topics here would hold every batch behind it, so storing catches up first (workers
    # take the ingest queue before the workflows queue) and the topics are driven by tasks.
    here = serves_workflows() and not waited(items)
    hand_over(settings, result, drive_here if here else None, run_here if here else None)
    # Stored: off the receiver's ledger. Done after the hand-over, as its fsynced Redis write
    # (~0.5 ms) would otherwise delay every event's workflow; meanwhile the batch only holds
    # other batches' gap declarations back by as long (see ``sequencing_horizon``). A hand-over
    # that failed leaves the batch in the ledger: it is retried, stores nothing, hands over again.
    settle_stored(broker, batch_id)
    return result


def waited(items: list[list[Any]], now_ms: int | None = None) -> bool:
    """Whether the batch's oldest item was received more than ``WAITED_S`` ago."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return now_ms - oldest_received_ms(items, now_ms) > WAITED_S * 1000


def _dead_letter_batch(
    settings: Settings, broker: str, items: list[list[Any]], batch_id: str, exc: Exception
) -> None:
    """Keep a batch that failed for good, then drop it from the ledger (a poison batch must
    neither come back forever nor hold gap declarations back)."""
    logger.error("batch failed, dead-lettered id=%s error=%r", batch_id, exc, exc_info=exc)
    for attempt in itertools.count():
        try:
            with transaction(settings) as conn:
                dead_letter(conn, "ingest", f"batch failed: {exc!r}",
                            {"task_id": batch_id, "items": items})  # fmt: skip
            break
        except DB_ERRORS:
            time.sleep(min(BACKOFF_MAX_S, 2.0**attempt))
    settle_stored(broker, batch_id)
