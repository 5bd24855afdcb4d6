"""A workflow that fails on purpose, for the tests of retries and dead letters (workers import it
through the test's routes file)."""

from __future__ import annotations

from typing import Any

from pipeline.celery_app import app


@app.task(name="tests.e2e.flaky_workflows.shout")
def shout(event: dict[str, Any]) -> str:
    """Uppercase, except a message saying "boom", which always fails."""
    if "boom" in event["text"]:
        raise RuntimeError("boom: this message always fails")
    return str(event["text"]).upper()
