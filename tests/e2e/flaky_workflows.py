"""A workflow that fails on purpose, for the tests of retries and dead letters (workers import it
through the test's routes file)."""

from __future__ import annotations

import os
from typing import Any

from pipeline.celery_app import app


@app.task(name="tests.e2e.flaky_workflows.shout")
def shout(event: dict[str, Any]) -> str:
    """Uppercase, except a message saying "boom", which always fails."""
    if "boom" in event["text"]:
        raise RuntimeError("boom: this message always fails")
    return str(event["text"]).upper()


@app.task(name="tests.e2e.flaky_workflows.shout_until_fixed")
def shout_until_fixed(event: dict[str, Any]) -> str:
    """Uppercase; a message saying "boom" fails while the file FLAKY_BROKEN_FILE exists (the
    test deletes it: the fix, before a replay)."""
    broken = os.environ.get("FLAKY_BROKEN_FILE")
    if "boom" in event["text"] and broken and os.path.exists(broken):
        raise RuntimeError("boom: fails until the fix is deployed")
    return str(event["text"]).upper()
