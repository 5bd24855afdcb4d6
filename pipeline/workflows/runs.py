"""workflow_runs: which runs were handed out, so each is sent once and lost ones are found."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from celery import Celery
from sqlalchemy import Connection, func
from sqlalchemy.dialects.postgresql import insert as pg_insert

from pipeline.models import WorkflowRun

logger = logging.getLogger(__name__)


def backoff_s(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1, 2, 4 … capped at 60, with jitter)."""
    return float(min(60.0, 2.0 ** max(0, attempt - 1)) * random.uniform(0.8, 1.2))


def claim_runs(
    conn: Connection, pairs: list[tuple[str, int]], *, again: bool
) -> list[tuple[str, int]]:
    """Record runs about to be dispatched; returns the pairs not already recorded (all if again)."""
    if not pairs:
        return []
    stmt = pg_insert(WorkflowRun).values(
        [{"route": r, "event_id": e, "status": "running"} for r, e in pairs]
    )
    if again:
        stmt = stmt.on_conflict_do_update(
            index_elements=["route", "event_id"],
            set_={"status": "running", "started_at": func.now(), "finished_at": None},
        )
    else:
        stmt = stmt.on_conflict_do_nothing()
    rows = conn.execute(stmt.returning(WorkflowRun.route, WorkflowRun.event_id)).all()
    return [(row.route, row.event_id) for row in rows]


def dispatch_late(app: Celery, conn: Connection, route: str, late: Sequence[int]) -> int:
    """Run events an ordered route's cursor passed before they arrived, each on its own."""
    claimed = claim_runs(conn, [(route, event_id) for event_id in late], again=False)
    for name, event_id in claimed:
        logger.warning("late event runs out of order route=%s event=%d", name, event_id)
        app.send_task("tasks.workflows.run", args=(name, event_id, "single"))
    return len(claimed)
