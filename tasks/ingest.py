"""Ingest tasks: store receiver batches in Postgres, then hand new events to the sequencer."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.signals import worker_init
from celery.utils.log import get_task_logger
from sqlalchemy.exc import InterfaceError, OperationalError

from pipeline.celery_app import app, broker_url
from pipeline.config import get_settings
from pipeline.dispatch import hand_over
from pipeline.ingest import store_batch
from pipeline.ingest_ledger import sequencing_horizon, settle_stored
from pipeline.sequencer import policy_from
from tasks.workflows import drive_here, run_here, serves_workflows

logger = get_task_logger(__name__)


@worker_init.connect
def _ingest_events(**_: Any) -> None:
    """Monitoring events for ingest batches only when asked (PIPELINE_INGEST_TASK_EVENTS).

    Each task costs its worker three synchronous broker round trips of events (received, started,
    succeeded): on the hot path, with one batch per few events at low rates, that was 40% of a
    worker's consumer process. Ingest is counted on the receiver's /metrics instead; the
    workflow, publish and aggregate tasks still show in Flower.
    """
    store_webhooks.send_events = get_settings().pipeline_ingest_task_events


@app.task(
    bind=True,
    name="tasks.ingest.store_webhooks",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=None,
)
def store_webhooks(self: Task, items: list[list[Any]]) -> dict[str, int]:
    """Store one batch of ``[raw body, received ms]`` items; retried while Postgres is down."""
    settings = get_settings()
    broker = broker_url(settings)
    hold_s, batch_id = settings.pipeline_backlog_hold_s, self.request.id

    def horizon() -> int | None:  # batches received earlier but still queued keep gaps open
        return sequencing_horizon(broker, hold_s, batch_id)

    result = store_batch(settings, items, policy_from(settings), batch_id, horizon)
    # After the commit, events go to the workflow stage: a worker that also serves the workflows
    # queue runs them itself, saving a broker hop and a task; a dedicated one hands them over.
    here = serves_workflows()
    try:
        hand_over(settings, result, items, drive_here if here else None, run_here if here else None)
    finally:
        # Stored: off the receiver's ledger. Done after the hand-over, as its fsynced Redis write
        # (~0.5 ms) would otherwise delay every event's workflow; meanwhile the batch only holds
        # other batches' gap declarations back by as long (see ``sequencing_horizon``).
        settle_stored(broker, batch_id)
    if result.replayed:
        logger.info("batch already stored id=%s", self.request.id)
        return {"new": 0, "duplicates": 0, "dead": 0}
    logger.info(
        "stored batch=%d new=%d dup=%d dead=%d",
        len(items),
        len(result.new_ids),
        result.duplicates,
        result.dead,
    )
    return {"new": len(result.new_ids), "duplicates": result.duplicates, "dead": result.dead}
