"""The ingest ledger: every batch the receiver pushes to a Redis broker, kept until it is stored.

Kombu's Redis transport takes a message with ``BRPOP`` and records it as unacknowledged only
afterwards, in the worker; a worker killed in between loses the message, although its events
were answered 204. So the receiver writes each batch twice in one ``MULTI``: onto the ingest
queue, and into this ledger (a hash of messages by task id, and a sorted set of when each was
pushed). The ingest task removes its batch once the batch is committed. Any worker serving the
ingest queue looks every few seconds for batches still in the ledger after the visibility
timeout (lost, or still waiting or running after that long) and pushes them onto the queue again.
A batch that arrives twice is harmless: the ingest task claims batches by task id, so the second
copy stores nothing and only hands its events over again.

The ledger also tells the sequencer which deliveries are still on their way: a gap is not
declared lost while a batch received before its reorder window closed waits to be stored
(``sequencing_horizon``), so a backlog of ingest tasks reads as late, not as lost messages.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar, cast

import redis
from celery import bootsteps

logger = logging.getLogger(__name__)

MESSAGES = "pipeline:ingest:ledger"
"""Hash: task id → the broker message as pushed."""
PUSHED_AT = "pipeline:ingest:ledger:pushed"
"""Sorted set: task id → when its oldest delivery was received (when it was last pushed again),
in ms since the epoch."""


def applies_to(broker: str) -> bool:
    """Whether batches sent to ``broker`` go through the ledger: Redis brokers, which the
    receiver pushes to itself (``pipeline.batcher.redis_sender``)."""
    return broker.startswith(("redis://", "rediss://"))


def record(pipe: Any, task_id: str, message: bytes, received_ms: int) -> None:
    """Add a pushed batch, whose oldest delivery was received at ``received_ms``, to the ledger
    (commands queued on the receiver's MULTI pipeline)."""
    pipe.hset(MESSAGES, task_id, message)
    pipe.zadd(PUSHED_AT, {task_id: received_ms})


def oldest_unstored_ms(client: redis.Redis, other_than: str | None = None) -> int | None:
    """When the oldest delivery of any batch still in the ledger (but ``other_than``) was
    received; None if there is none."""
    oldest: list[tuple[bytes, float]] = cast(Any, client.zrange(PUSHED_AT, 0, 1, withscores=True))
    for task_id, score in oldest:
        if task_id.decode() != other_than:
            return int(score)
    return None


def settle(client: redis.Redis, task_id: str) -> None:
    """Drop a stored batch from the ledger (called by the ingest task after its commit)."""
    pipe = client.pipeline(transaction=False)
    pipe.hdel(MESSAGES, task_id)
    pipe.zrem(PUSHED_AT, task_id)
    pipe.execute()


_clients: dict[str, redis.Redis] = {}


def _client(broker: str) -> redis.Redis:
    client = _clients.get(broker)
    if client is None:
        client = _clients[broker] = redis.Redis.from_url(broker, socket_timeout=5)
    return client


def settle_stored(broker: str, task_id: str) -> None:
    """``settle`` through this process's client for a Redis ``broker`` (nothing for others).

    A failure is logged, not raised: the batch is stored, and pushing it again later would
    store nothing.
    """
    if not applies_to(broker):
        return
    try:
        settle(_client(broker), task_id)
    except redis.RedisError as exc:
        logger.warning("ingest ledger not updated task=%s error=%r", task_id, exc)


def sequencing_horizon(
    broker: str, hold_s: float, other_than: str | None = None, now_ms: int | None = None
) -> int | None:
    """How far gap declarations may go (``pipeline.sequencing``'s ``horizon_ms``): when the
    oldest delivery of a batch received but not yet stored (but ``other_than``, the one being
    stored) arrived, held back at most ``hold_s``; None when nothing is pending, the broker
    keeps no ledger, or it cannot be read (declarations then follow the clock alone).
    """
    if not applies_to(broker):
        return None
    try:
        oldest = oldest_unstored_ms(_client(broker), other_than)
    except redis.RedisError as exc:
        logger.warning("ingest ledger not read error=%r", exc)
        return None
    if oldest is None:
        return None
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return max(oldest, now_ms - int(hold_s * 1000))


def resend_stranded(client: redis.Redis, queue: str, older_than_s: float) -> int:
    """Push batches in the ledger longer than ``older_than_s`` onto ``queue`` again.

    Each is pushed at most once per ``older_than_s``: its time in the ledger starts over.
    Returns how many were pushed.
    """
    now_ms = int(time.time() * 1000)
    due = client.zrangebyscore(PUSHED_AT, "-inf", now_ms - older_than_s * 1000)
    resent = 0
    for task_id in due:
        task_id = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
        message = client.hget(MESSAGES, task_id)
        if message is None:  # stored meanwhile
            client.zrem(PUSHED_AT, task_id)
            continue
        pipe = client.pipeline(transaction=True)
        pipe.rpush(queue, message)  # the consuming end: it goes first
        pipe.zadd(PUSHED_AT, {task_id: now_ms})
        pipe.execute()
        resent += 1
    if resent:
        logger.warning("ingest batches pushed again after %.0f s count=%d", older_than_s, resent)
    return resent


class ResendStranded(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker consumer step: every few seconds, ``resend_stranded`` on the ingest queue.

    Runs only in workers that consume the ingest queue from a Redis broker. Any number may run
    at once: a batch resent twice is stored once.
    """

    requires: ClassVar[set[str]] = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None
        self.client: redis.Redis | None = None

    def start(self, c: Any) -> None:
        from pipeline.batcher import INGEST_QUEUE
        from pipeline.celery_app import broker_url
        from pipeline.config import get_settings

        settings = get_settings()
        url = broker_url(settings)
        queues = {queue.name for queue in c.task_consumer.queues} if c.task_consumer else set()
        if not applies_to(url) or INGEST_QUEUE not in queues:
            return
        self.client = redis.Redis.from_url(url, socket_timeout=5)
        older_than_s = float(settings.pipeline_visibility_timeout_s)
        period_s = max(1.0, min(60.0, older_than_s / 2))

        def resend() -> None:
            assert self.client is not None
            try:
                resend_stranded(self.client, INGEST_QUEUE, older_than_s)
            except redis.RedisError as exc:  # the broker is down: the next look tries again
                logger.warning("ingest ledger check failed error=%r", exc)

        self.tref = c.timer.call_repeatedly(period_s, resend, priority=10)

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        if self.client is not None:
            self.client.close()
            self.client = None
