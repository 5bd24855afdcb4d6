"""Sequencer beat task: declare gaps whose reorder window passed on topics that went quiet."""

from __future__ import annotations

from celery.utils.log import get_task_logger

from pipeline.celery_app import app
from pipeline.config import get_settings
from pipeline.db import session_scope
from pipeline.ingest.ledger import sequencing_horizon
from pipeline.sequencing.store import policy_from, tick
from pipeline.stores import broker_url
from tasks.retry import PERIODIC

logger = get_task_logger(__name__)


@app.task(
    name="tasks.sequence.tick",
    expires=30,
    **PERIODIC,
)
def sequence_tick() -> dict[str, int]:
    """Advance every idle topic's cursor to now; return how many numbers were declared lost."""
    settings = get_settings()
    broker, hold_s = broker_url(settings), settings.pipeline_backlog_hold_s
    with session_scope(settings) as session:
        report = tick(
            session, policy_from(settings), horizon=lambda: sequencing_horizon(broker, hold_s)
        )
    if report.lost or report.filled:
        logger.info("tick topics=%d lost=%d", len(report.topics), report.lost)
    return {"topics": len(report.topics), "lost": report.lost}
