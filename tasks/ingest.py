"""Ingest tasks: store receiver batches in Postgres, then hand new events to the sequencer."""

from __future__ import annotations

from typing import Any

from celery.utils.log import get_task_logger
from sqlalchemy.exc import InterfaceError, OperationalError

from pipeline.celery_app import app
from pipeline.db import session_scope
from pipeline.ingest import store_webhook_batch

logger = get_task_logger(__name__)


@app.task(
    name="tasks.ingest.store_webhooks",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=None,
)
def store_webhooks(items: list[list[Any]]) -> dict[str, int]:
    """Store one batch of ``[raw body, received ms]`` items; retried while Postgres is down."""
    with session_scope() as session:
        result = store_webhook_batch(session, items)
    logger.info(
        "stored batch=%d new=%d dup=%d dead=%d",
        len(items),
        len(result.new_ids),
        result.duplicates,
        result.dead,
    )
    return {"new": len(result.new_ids), "duplicates": result.duplicates, "dead": result.dead}
