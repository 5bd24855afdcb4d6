"""`pipeline replay` with no worker running: it says the runs are queued, and they wait."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.config import Settings
from tests.conftest import queued_messages
from tests.integration.aggregation.test_aggregation import BASE_MS, item, store

ROUTES = """
[[routes]]
name = "shout"
cache = "chat"
topic = "room-*"
workflow = "tasks.examples:uppercase"
publish = { cache = "chat", topic = "loud" }
"""


def _replay(routes: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "replay", *args],
        env=dict(os.environ, PIPELINE_ROUTES=str(routes)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_replay_without_workers_queues_and_a_dry_run_counts_what_it_does_not_list(
    db: Settings, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    store(db, *(item(seq, BASE_MS + seq, BASE_MS + seq + 5) for seq in range(1, 24)))
    dry = _replay(routes, "--dry-run")
    assert "would replay 23 runs of 23 events" in dry
    assert dry.count("route=shout") == 20
    assert "… and 3 more" in dry
    before = queued_messages(db, "workflows")
    out = _replay(routes)
    assert "queued 23 runs of 23 events for the workers" in out
    assert "replayed" not in out
    assert "no worker answered" in out
    assert queued_messages(db, "workflows") == before + 23  # nobody took them: still waiting
