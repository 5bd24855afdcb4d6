"""Aggregation tasks (queue "aggregate"): roll-ups with summaries, and retention. Beat runs both.

Both are safe to run at any time and in any number: a roll-up run takes an advisory lock per
window length (a second one returns at once) and recomputes idempotently; retention deletes only
rows that are expired and already rolled up.
"""

from __future__ import annotations

from celery import Task
from celery.utils.log import get_task_logger

from pipeline.aggregation import rollups as aggregation
from pipeline.aggregation import summaries
from pipeline.aggregation.retention import delete_expired, retention_cutoff
from pipeline.celery_app import app
from pipeline.config import Settings, get_settings
from pipeline.db import get_engine
from pipeline.errors import MomentoError
from pipeline.workflows.routes import routes_for
from pipeline.workflows.templates import glob_regex
from tasks.retry import PERIODIC

logger = get_task_logger(__name__)

MAX_IDS_PER_RUN = 2_000_000
"""Bounds one run well inside the task time limit; a larger backlog continues in a new run."""


@app.task(
    bind=True,
    name="tasks.aggregate.rollup",
    **PERIODIC,
)
def rollup(self: Task) -> dict[str, int]:
    """Roll up new rows into windows of PIPELINE_ROLLUP_WINDOW_S, then publish finished ones."""
    settings = get_settings()
    report = aggregation.rollup(
        get_engine(settings),
        settings.pipeline_rollup_window_s,
        keep_after=retention_cutoff(settings.pipeline_retention_days),
        max_ids=MAX_IDS_PER_RUN,
    )
    if report.remaining_ids:
        logger.info("rollup backlog remaining_ids=%d, continuing", report.remaining_ids)
        self.apply_async()
    return {
        "skipped": int(report.skipped),
        "windows": report.windows_written,
        "remaining_ids": report.remaining_ids,
        "out_of_range": report.events_out_of_range,
        "published": publish_summaries(settings),
    }


def publish_summaries(settings: Settings) -> int:
    """Publish finished windows to the summary topic, if one is configured; return how many.

    A Momento failure is logged, not raised: the windows stay unpublished and the next run
    tries again, while the roll-up itself has already been saved.
    """
    target = summaries.momento_publisher(settings)
    if target is None:
        return 0
    publish, close = target
    try:
        return summaries.publish_finished(
            get_engine(settings),
            settings.pipeline_rollup_window_s,
            publish,
            settle_s=settings.pipeline_reorder_window_s + 10,
        )
    except MomentoError as exc:
        logger.warning("summary publish failed error=%s", exc)
        return 0
    finally:
        close()


@app.task(
    name="tasks.aggregate.retention",
    **PERIODIC,
)
def retention() -> dict[str, int]:
    """Delete raw rows older than PIPELINE_RETENTION_DAYS that are already rolled up."""
    settings = get_settings()
    ordered = [
        (r.name, glob_regex(r.cache), glob_regex(r.topic))
        for r in routes_for(settings)
        if r.ordered
    ]
    report = delete_expired(
        get_engine(settings),
        settings.pipeline_retention_days,
        settings.pipeline_rollup_window_s,
        ordered=ordered,
    )
    return {"events": report.events, "duplicates": report.duplicates, "batches": report.batches}
