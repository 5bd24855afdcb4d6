"""Dead letters on the page: listing, counts by reason, and replays with their progress.

A replay follows the rules of `pipeline replay --dead-letters` (pipeline.workflows.replays): only
unresolved workflow and publish dead letters whose route still matches, recorded as runs and sent
to the workers; results go through the outbox. Progress is read back from workflow_runs and the
outbox, so the page shows what the workers did, not what the dashboard hoped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Row, func, select, tuple_

from pipeline.models import DeadLetter, OutboxMessage, OutboxStatus, WorkflowRun
from pipeline.workflows.replays import BATCH, Selection, dispatch_replays, select_runs
from pipeline.workflows.routes import RouteTable

if TYPE_CHECKING:
    from celery import Celery

PAGE_SIZE = 200
LETTERS = DeadLetter.__table__


@dataclass(frozen=True, slots=True)
class LetterFilter:
    """Which dead letters a page shows: kind, a reason fragment, resolved ones too or not."""

    kind: str | None = None
    reason: str | None = None
    resolved: bool = False


def _where(chosen: LetterFilter) -> list[Any]:
    clauses: list[Any] = []
    if not chosen.resolved:
        clauses.append(DeadLetter.resolved_at.is_(None))
    if chosen.kind:
        clauses.append(DeadLetter.kind == chosen.kind)
    if chosen.reason:
        clauses.append(DeadLetter.reason.contains(chosen.reason, autoescape=True))
    return clauses


def list_letters(engine: Engine, chosen: LetterFilter) -> list[Row[Any]]:
    """Matching dead letters, newest first."""
    stmt = select(LETTERS).where(*_where(chosen)).order_by(DeadLetter.id.desc()).limit(PAGE_SIZE)
    with engine.connect() as conn:
        return list(conn.execute(stmt).all())


def count_by_reason(engine: Engine, chosen: LetterFilter) -> list[tuple[str, str, int]]:
    """(kind, reason, count) of the matching dead letters, most frequent first."""
    n = func.count().label("n")
    stmt = (
        select(DeadLetter.kind, DeadLetter.reason, n)
        .where(*_where(chosen))
        .group_by(DeadLetter.kind, DeadLetter.reason)
        .order_by(n.desc(), DeadLetter.kind)
    )
    with engine.connect() as conn:
        return [(row.kind, row.reason, int(row.n)) for row in conn.execute(stmt)]


def matching_letter_ids(engine: Engine, chosen: LetterFilter) -> tuple[int, ...]:
    """Ids of every unresolved dead letter the filter matches (what "replay all" means)."""
    live = LetterFilter(kind=chosen.kind, reason=chosen.reason, resolved=False)
    with engine.connect() as conn:
        rows = conn.execute(select(DeadLetter.id).where(*_where(live))).scalars()
        return tuple(int(i) for i in rows)


def planned_runs(engine: Engine, table: RouteTable, ids: tuple[int, ...]) -> list[tuple[str, int]]:
    """The (route, event id) runs replaying dead letters ``ids`` would start."""
    if not ids:
        return []
    with engine.connect() as conn:
        return select_runs(conn, table, Selection(dead_letters=True, letter_ids=ids))


def start_replay(engine: Engine, app: Celery, pairs: list[tuple[str, int]]) -> int:
    """Send the runs to the workers in batches; returns how many were sent."""
    sent = 0
    for start in range(0, len(pairs), BATCH):
        sent += dispatch_replays(engine, app, pairs[start : start + BATCH])
    return sent


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a replay has come."""

    runs: int
    finished: int
    failed: int
    rows_sent: int
    rows_waiting: int

    @property
    def done(self) -> bool:
        """Every run finished and no result waits to be sent."""
        return self.finished >= self.runs and self.rows_waiting == 0


def replay_progress(engine: Engine, pairs: list[tuple[str, int]]) -> Progress:
    """Runs of ``pairs`` finished (and failed again), and their outbox rows sent or waiting."""
    if not pairs:
        return Progress(0, 0, 0, 0, 0)
    runs_key = tuple_(WorkflowRun.route, WorkflowRun.event_id).in_(pairs)
    rows_key = tuple_(OutboxMessage.route, OutboxMessage.event_id).in_(pairs)
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(
                select(WorkflowRun.status, func.count()).where(runs_key).group_by("status")
            ).all()
        )
        rows = dict(
            conn.execute(
                select(OutboxMessage.status, func.count()).where(rows_key).group_by("status")
            ).all()
        )
    running = int(statuses.get("running", 0))
    return Progress(
        runs=len(pairs),
        finished=len(pairs) - running,
        failed=int(statuses.get("failed", 0)),
        rows_sent=int(rows.get(OutboxStatus.SENT, 0)),
        rows_waiting=int(rows.get(OutboxStatus.PENDING, 0)),
    )
