"""The ingest ledger on a real broker: a batch taken from the queue by a worker that died before
recording it is pushed again and stored; stored batches leave the ledger."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis

from pipeline import ingest_ledger
from pipeline.batcher import INGEST_QUEUE, redis_sender
from pipeline.config import Settings
from tests.conftest import WorkerProcess, count_rows, signed_webhook, wait_for


def batch(seqs: range) -> list[list[object]]:
    now_ms = int(time.time() * 1000)
    return [[signed_webhook(seq)[0].decode(), now_ms] for seq in seqs]


def test_resend_pushes_only_batches_older_than_the_limit_once_per_limit(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    queue = f"ledger-test-{time.monotonic_ns()}"
    client.delete(ingest_ledger.MESSAGES, ingest_ledger.PUSHED_AT)  # other tests' batches
    now_ms = int(time.time() * 1000)
    pipe = client.pipeline()
    ingest_ledger.record(pipe, "old", b"old message", now_ms - 60_000)
    ingest_ledger.record(pipe, "new", b"new message", now_ms)
    ingest_ledger.record(pipe, "stored", b"stored message", now_ms - 60_000)
    pipe.execute()
    ingest_ledger.settle(client, "stored")
    try:
        assert ingest_ledger.resend_stranded(client, queue, older_than_s=30) == 1
        assert client.lrange(queue, 0, -1) == [b"old message"]
        assert ingest_ledger.resend_stranded(client, queue, older_than_s=30) == 0  # pushed anew
        assert client.hget(ingest_ledger.MESSAGES, "stored") is None
    finally:
        client.delete(queue)
        for task_id in ("old", "new"):
            ingest_ledger.settle(client, task_id)
        client.close()


def test_a_batch_lost_between_queue_and_worker_is_stored_after_the_visibility_timeout(
    db: Settings, worker_factory: Callable[..., WorkerProcess]
) -> None:
    assert db.celery_broker_url is not None
    client = redis.Redis.from_url(db.celery_broker_url)
    push = redis_sender(db)
    delivered, lost = batch(range(1, 4)), batch(range(4, 7))

    async def send() -> None:  # queued and in the ledger, as the receiver does it
        try:
            await push(delivered)
        finally:
            await push.aclose()

    asyncio.run(send())
    task_id, message = push.encode(lost)
    # The lost batch is in the ledger only: a worker took it off the queue and died.
    pipe = client.pipeline()
    ingest_ledger.record(pipe, task_id, message, int(time.time() * 1000))
    pipe.execute()
    worker_factory("keeper")
    events = "SELECT count(*) FROM events"
    assert wait_for(lambda: count_rows(db, events) == 3, 30)
    assert client.zcard(ingest_ledger.PUSHED_AT) == 1  # the stored batch left the ledger
    # Visibility timeout in tests: 10 s; workers look every 5 s.
    assert wait_for(lambda: count_rows(db, events) == 6, 40)
    assert wait_for(lambda: client.zcard(ingest_ledger.PUSHED_AT) == 0, 10)
    assert client.llen(INGEST_QUEUE) == 0
    client.close()
