"""A real worker process takes a real task from the real broker and writes to real Postgres."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from pipeline.celery_app import app
from pipeline.config import Settings
from tests.conftest import WorkerProcess, count_rows, wait_for


def webhook_item(seq: int, topic: str = "room-1") -> list[object]:
    now = int(time.time() * 1000)
    body = {
        "cache": "chat",
        "topic": topic,
        "event_timestamp": now,
        "publish_timestamp": now,
        "topic_sequence_number": seq,
        "token_id": "",
        "text": f"message {seq}",
    }
    return [json.dumps(body), now]


def test_worker_process_stores_a_batch_once_even_when_sent_twice(
    db: Settings, worker_factory: Callable[..., WorkerProcess]
) -> None:
    worker_factory("roundtrip")
    batch = [webhook_item(seq) for seq in range(1, 6)]
    app.send_task("tasks.ingest.store_webhooks", args=[batch])
    app.send_task("tasks.ingest.store_webhooks", args=[batch])  # a redelivery adds nothing
    assert wait_for(lambda: count_rows(db, "SELECT count(*) FROM events") == 5, 20)
    time.sleep(1.0)
    assert count_rows(db, "SELECT count(*) FROM events") == 5
    assert count_rows(db, "SELECT count(DISTINCT topic_sequence_number) FROM events") == 5


def test_poison_item_goes_to_dead_letters_and_the_rest_is_stored(
    db: Settings, worker_factory: Callable[..., WorkerProcess]
) -> None:
    worker_factory("poison")
    batch = [webhook_item(1), ["{not json", 0], webhook_item(2)]
    app.send_task("tasks.ingest.store_webhooks", args=[batch])
    assert wait_for(lambda: count_rows(db, "SELECT count(*) FROM dead_letters") == 1, 20)
    assert count_rows(db, "SELECT count(*) FROM events") == 2


def test_a_row_postgres_refuses_is_set_aside_and_the_rest_of_its_batch_stored(
    db: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import ingest
    from pipeline.sequencer import policy_from

    real_rows = ingest.webhook_rows

    def one_unstorable(items: Any) -> Any:
        rows, poison = real_rows(items)
        rows[1]["token_id"] = "x" * 300  # longer than the column: a value validation missed
        return rows, poison

    monkeypatch.setattr(ingest, "webhook_rows", one_unstorable)
    batch = [webhook_item(seq, topic="refused") for seq in (1, 2, 3)]
    result = ingest.store_batch(db, batch, policy_from(db), "refused-batch")
    assert (len(result.new_ids), result.dead) == (2, 1)
    stored = "SELECT count(*) FROM events WHERE topic = 'refused'"
    assert count_rows(db, stored) == 2
    reason = "SELECT count(*) FROM dead_letters WHERE reason LIKE '%too long%'"
    assert count_rows(db, reason) == 1
    again = ingest.store_batch(db, batch, policy_from(db), "refused-batch")
    assert again.replayed  # the isolated redo claimed the batch: a redelivery adds nothing
    assert count_rows(db, stored) == 2
