"""Publish-stage tasks: send outbox rows to Momento (workflows also send right after commit)."""

from __future__ import annotations

from functools import cache

from celery.utils.log import get_task_logger

from pipeline.celery_app import app
from pipeline.config import get_settings
from pipeline.db import get_engine
from pipeline.outbound.publisher import Publisher, SendReport
from tasks.retry import UNTIL_DONE

logger = get_task_logger(__name__)


@cache
def publisher() -> Publisher:
    """This process's publisher (built on first use, after the prefork pool forked)."""
    settings = get_settings()
    return Publisher(settings, get_engine(settings))


def _follow_up(report: SendReport) -> dict[str, int]:
    if report.retry_in_s is not None:
        drain.apply_async(countdown=report.retry_in_s)
    if report.sent or report.retried or report.dead:
        logger.info("outbox sent=%d retried=%d dead=%d", report.sent, report.retried, report.dead)
    return {"sent": report.sent, "retried": report.retried, "dead": report.dead}


@app.task(
    name="tasks.publish.send",
    **UNTIL_DONE,
)
def send(ids: list[int]) -> dict[str, int]:
    """Send these outbox rows (if still pending and due); ordered keys are drained in order."""
    return _follow_up(publisher().send_ids(ids))


@app.task(name="tasks.publish.drain", acks_late=True, expires=30, ignore_result=True)
def drain(limit: int = 500) -> dict[str, int]:
    """Beat (and after a retry's backoff): send every due row; the safety net of the outbox."""
    return _follow_up(publisher().drain(limit))
