"""Change-record tasks: store the receiver's batches of change records, then send their cache
writes and topic messages (``pipeline.ingest.change_store``)."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.utils.log import get_task_logger

from pipeline.celery_app import app
from pipeline.config import Settings
from pipeline.ingest.change_store import ChangeStoreResult, store_change_batch
from pipeline.ingest.ledger import settle_stored
from pipeline.workflows.routes import routes_for
from tasks.ingest import TASK_OPTIONS, store_items
from tasks.publish import drain, publisher

logger = get_task_logger(__name__)


@app.task(name="tasks.changes.store", **TASK_OPTIONS)
def store(self: Task, items: list[list[Any]]) -> dict[str, int]:
    """Store one receiver batch of ``[source, body, received ms]`` items (see ``store_items``)."""
    return store_items(self.request.id, items, store=store_and_send)


def store_and_send(
    settings: Settings, broker: str, items: list[list[Any]], batch_id: str
) -> ChangeStoreResult:
    """Store and apply the batch (one transaction), send its outbox rows, settle the ledger.

    A send that fails leaves its rows pending for the outbox drain: the batch is stored.
    """
    result = store_change_batch(settings, items, routes_for(settings))
    keys = sorted({row.ordering_key for row in result.outbox if row.ordering_key is not None})
    if keys:
        try:
            report = publisher().flush_keys_waiting(keys)
            if report.retry_in_s is not None:
                drain.apply_async(countdown=report.retry_in_s)
        except Exception as exc:  # the drain sends them
            logger.warning("change rows left to the drain keys=%d error=%r", len(keys), exc)
    settle_stored(broker, batch_id)
    logger.info("changes batch=%d new=%d applied=%d stale=%d dup=%d dead=%d", len(items),
                len(result.new_ids), result.applied, result.stale, result.duplicates,
                result.dead)  # fmt: skip
    return result
