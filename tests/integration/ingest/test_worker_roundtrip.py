"""A real worker process takes a real task from the real broker and writes to real Postgres."""

from __future__ import annotations

import contextlib
import json
import threading
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
    from pipeline.ingest import store as ingest
    from pipeline.sequencing.store import policy_from

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


class TaskEvents:
    """Celery's monitoring events on the test broker (what Flower reads), collected in a thread."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self._connection = app.connection_for_read()
        self._receiver = app.events.Receiver(self._connection, handlers={"*": self.seen.append})
        self._thread = threading.Thread(target=self._capture, daemon=True)

    def _capture(self) -> None:
        with contextlib.suppress(Exception):  # the connection closes under it on stop
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> TaskEvents:
        self._receiver.should_stop = False
        self._thread.start()
        time.sleep(0.5)  # subscribed before anything is sent
        return self

    def __exit__(self, *_: object) -> None:
        self._receiver.should_stop = True
        self._thread.join(5)
        self._connection.release()

    def kinds_of(self, task_id: str) -> set[str]:
        return {event["type"] for event in self.seen if event.get("uuid") == task_id}


@pytest.mark.parametrize("enabled", [False, True])
def test_ingest_batches_send_task_events_only_when_configured(
    db: Settings, worker_factory: Callable[..., WorkerProcess], enabled: bool
) -> None:
    env = {"PIPELINE_INGEST_TASK_EVENTS": "true"} if enabled else {}
    worker_factory(f"events-{enabled}", env=env)
    with TaskEvents() as events:
        ingest = app.send_task("tasks.ingest.store_webhooks", args=[[webhook_item(1)]])
        sweep = app.send_task("tasks.workflows.sweep")
        assert wait_for(lambda: "task-succeeded" in events.kinds_of(sweep.id), 20)
        assert wait_for(lambda: count_rows(db, "SELECT count(*) FROM events") == 1, 20)
        time.sleep(0.5)
    ingest_events = events.kinds_of(ingest.id)
    assert ("task-succeeded" in ingest_events) is enabled, ingest_events


def test_a_number_declared_lost_that_arrives_after_all_leaves_its_lost_range(db: Settings) -> None:
    """Stored on the ingest path's Core connection: 4 and 5 are declared lost, 4 then arrives,
    and only 5 stays lost."""
    from pipeline.ingest import store as ingest
    from pipeline.sequencing.store import policy_from

    quick = db.model_copy(update={"pipeline_reorder_window_s": 0.2})
    policy = policy_from(quick)
    ingest.store_batch(db, [webhook_item(n, topic="lost") for n in (1, 2, 3)], policy, "b1")
    time.sleep(0.3)
    ingest.store_batch(db, [webhook_item(6, topic="lost")], policy, "b2")
    time.sleep(0.3)  # past the window: the next batch's sequencing declares 4 and 5 lost
    ingest.store_batch(db, [webhook_item(7, topic="lost")], policy, "b3")
    assert wait_for(lambda: lost_ranges(db) == ["4-5"], 5), lost_ranges(db)
    result = ingest.store_batch(db, [webhook_item(4, topic="lost")], policy, "b4")
    assert (len(result.new_ids), result.dead) == (1, 0)
    assert lost_ranges(db) == ["5-5"]
    assert count_rows(db, "SELECT count(*) FROM events WHERE topic = 'lost'") == 6


def lost_ranges(db: Settings) -> list[str]:
    from sqlalchemy import text

    from pipeline.db import get_engine

    with get_engine(db).connect() as conn:
        found = conn.execute(
            text("SELECT first_seq || '-' || last_seq FROM lost_ranges WHERE topic = 'lost'")
        )
        return [str(r) for r in found.scalars()]


def test_a_batch_that_keeps_failing_is_dead_lettered_once_and_leaves_the_ledger(
    db: Settings, worker_factory: Callable[..., WorkerProcess]
) -> None:
    import redis

    from pipeline.ingest import ledger as ingest_ledger

    assert db.celery_broker_url is not None
    client = redis.Redis.from_url(db.celery_broker_url)
    worker_factory("poison-batch")
    batch = [webhook_item(1), [webhook_item(2)[0], 10**18]]  # a receive time no datetime holds
    task_id = "poison-batch-1"
    pipe = client.pipeline()
    ingest_ledger.record(pipe, task_id, b"{}", int(time.time() * 1000))
    pipe.execute()
    app.send_task("tasks.ingest.store_webhooks", args=[batch], task_id=task_id)
    failed = "SELECT count(*) FROM dead_letters WHERE reason LIKE 'batch failed%'"
    assert wait_for(lambda: count_rows(db, failed) == 1, 20)
    assert wait_for(lambda: client.hget(ingest_ledger.MESSAGES, task_id) is None, 5)
    time.sleep(3.0)  # neither run again nor pushed again from the ledger
    assert count_rows(db, failed) == 1
    assert count_rows(db, "SELECT count(*) FROM events") == 0
    client.close()
