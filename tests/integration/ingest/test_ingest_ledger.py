"""The ingest ledger on a real broker: a batch taken from the queue by a worker that died before
recording it is pushed again and stored, and only such a batch; stored batches leave the ledger;
a batch still waiting to be stored keeps the sequencer from declaring its numbers lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis

from pipeline.config import Settings
from pipeline.ingest import held_deliveries
from pipeline.ingest import ledger as ingest_ledger
from pipeline.ingest.store import store_batch
from pipeline.ingest.transports import INGEST_QUEUE, redis_sender
from pipeline.sequencing.rules import SequencePolicy
from tests.conftest import WorkerProcess, count_rows, signed_webhook, wait_for


def batch(seqs: range) -> list[list[object]]:
    now_ms = int(time.time() * 1000)
    return [[signed_webhook(seq)[0].decode(), now_ms] for seq in seqs]


def test_only_batches_neither_waiting_nor_held_twice_in_a_row_are_pushed_again(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    queue = f"ledger-test-{time.monotonic_ns()}"
    keys = (ingest_ledger.MESSAGES, ingest_ledger.PUSHED_AT, ingest_ledger.SUSPECTS)
    client.delete(*keys)  # other tests' batches
    old_ms = int(time.time() * 1000) - 3_600_000  # an hour-long backlog creates no work
    pipe = client.pipeline()
    for task_id in ("waiting", "held", "lost", "stored"):
        message = f'{{"properties": {{"delivery_tag": "{task_id}"}}}}'.encode()
        ingest_ledger.record(pipe, task_id, message, old_ms)
    pipe.lpush(queue, b'{"properties": {"delivery_tag": "waiting"}}')
    pipe.hset(ingest_ledger.UNACKED, "held", b"[]")
    pipe.execute()
    ingest_ledger.settle(client, "stored")
    try:
        assert ingest_ledger.count_unseen(client, queue) == (2, 1)  # "waiting" and "lost"
        assert ingest_ledger.resend_lost(client, queue) == 0  # first sighting: a suspect only
        assert ingest_ledger.resend_lost(client, queue) == 1
        assert client.lindex(queue, -1) == b'{"properties": {"delivery_tag": "lost"}}'  # next out
        assert client.llen(queue) == 2
        assert ingest_ledger.count_unseen(client, queue) == (2, 2)
        assert ingest_ledger.resend_lost(client, queue) == 0  # nothing missing any more
        assert client.scard(ingest_ledger.SUSPECTS) == 0
        assert client.zscore(ingest_ledger.PUSHED_AT, "lost") == old_ms  # receive time kept
    finally:
        client.delete(queue, *keys)
        client.hdel(ingest_ledger.UNACKED, "held")
        client.close()


def test_a_batch_lost_between_queue_and_worker_is_pushed_again_and_stored(
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
    # Workers look every 2 s and push a batch seen missing twice: well inside the visibility
    # timeout (10 s in tests).
    assert wait_for(lambda: count_rows(db, events) == 6, 9)
    assert wait_for(lambda: client.zcard(ingest_ledger.PUSHED_AT) == 0, 10)
    assert client.llen(INGEST_QUEUE) == 0
    client.close()


def test_a_live_worker_restamps_what_it_holds_and_only_that(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    index = f"unacked-index-test-{time.monotonic_ns()}"
    client.zadd(index, {"held": 1.0, "gone": 1.0})
    try:
        held_deliveries.restamp(client, index, ("held", "acked-meanwhile"), 1_000.0)
        assert client.zscore(index, "held") == 1_000.0
        assert client.zscore(index, "gone") == 1.0  # nobody holds it: kombu may redeliver it
        assert client.zscore(index, "acked-meanwhile") is None  # never re-added
    finally:
        client.delete(index)
        client.close()


def test_a_batch_waiting_in_the_ledger_holds_its_gap_open_until_stored(db: Settings) -> None:
    assert db.celery_broker_url is not None
    broker = db.celery_broker_url
    client = redis.Redis.from_url(broker)
    policy = SequencePolicy(reorder_window_ms=2_000)
    t0 = int(time.time() * 1000) - 10_000
    lost = "SELECT count(*) FROM lost_ranges"

    def store(task_id: str, seq: int, received_ms: int) -> None:
        def horizon() -> int | None:
            return ingest_ledger.sequencing_horizon(broker, 30.0, task_id)

        store_batch(db, [[signed_webhook(seq, publish_ms=t0)[0].decode(), received_ms]],
                    policy, task_id, horizon)  # fmt: skip

    pipe = client.pipeline()  # number 2 was received at t0, its batch is still queued
    ingest_ledger.record(pipe, "queued", b"message", t0)
    pipe.execute()
    store("b1", 1, t0)
    store("b3", 3, t0)  # the gap at 2 opens at t0
    store("b4", 4, t0 + 5_000)  # well past the window: a clock alone would declare 2 lost
    assert count_rows(db, lost) == 0
    assert ingest_ledger.sequencing_horizon(broker, 30.0, "queued") is None  # only itself
    ingest_ledger.settle(client, "queued")  # stored elsewhere, say, without number 2 after all
    store("b5", 5, t0 + 6_000)
    assert count_rows(db, "SELECT count(*) FROM lost_ranges WHERE first_seq = 2") == 1
    client.close()


def test_the_horizon_is_the_oldest_pending_delivery_capped_only_if_asked(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.delete(ingest_ledger.MESSAGES, ingest_ledger.PUSHED_AT)
    now_ms = int(time.time() * 1000)
    assert ingest_ledger.sequencing_horizon(redis_url, now_ms=now_ms) is None
    pipe = client.pipeline()
    ingest_ledger.record(pipe, "older", b"m", now_ms - 3_600_000)
    ingest_ledger.record(pipe, "newer", b"m", now_ms - 1_000)
    pipe.execute()
    try:
        assert ingest_ledger.sequencing_horizon(redis_url, now_ms=now_ms) == now_ms - 3_600_000
        horizon = ingest_ledger.sequencing_horizon(redis_url, 0, "older", now_ms=now_ms)
        assert horizon == now_ms - 1_000  # the batch being stored does not hold itself back
        assert ingest_ledger.sequencing_horizon(redis_url, 2.0, now_ms=now_ms) == now_ms - 2_000
        assert ingest_ledger.sequencing_horizon("amqp://guest@localhost//", 30.0) is None
    finally:
        for task_id in ("older", "newer"):
            ingest_ledger.settle(client, task_id)
        client.close()


def test_an_unreadable_ledger_holds_every_gap_declaration() -> None:
    closed = "redis://127.0.0.1:1/0"  # nothing listens: as during a broker outage
    assert ingest_ledger.sequencing_horizon(closed) == 0  # no clock reaches a window past 0
    now_ms = int(time.time() * 1000)
    assert ingest_ledger.sequencing_horizon(closed, 30.0, now_ms=now_ms) == now_ms - 30_000
