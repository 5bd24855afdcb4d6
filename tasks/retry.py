"""The retry policy every task shares: retried while Postgres is unreachable, never lost.

Tasks spread one of these into ``@app.task(...)``. Only database outages are retried here; what a
task retries for other reasons (a workflow's own failure, a Momento error) it decides itself.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

DB_ERRORS = (OperationalError, InterfaceError)
"""Postgres is down or the connection broke: the same task will succeed later."""

DB_RETRY: dict[str, Any] = {
    "autoretry_for": DB_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
}
"""Exponential backoff from 1 s, at most 30 s, with jitter (Celery's default, said out loud)."""

UNTIL_DONE: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    **DB_RETRY,
    "max_retries": None,
}
"""Work that must happen (a run, a send): acked after it ran, requeued if the worker dies,
retried for as long as the database is away."""

PERIODIC: dict[str, Any] = {"acks_late": True, **DB_RETRY, "max_retries": 5}
"""Beat's jobs: a few retries, then the next beat runs them anyway."""
