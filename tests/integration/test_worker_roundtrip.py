"""A real worker process takes a real task from the real broker and writes to real Postgres."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

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
