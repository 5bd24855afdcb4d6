"""The ingest ledger: every batch the receiver pushes to a Redis broker, kept until it is stored.

Kombu's Redis transport takes a message with ``BRPOP`` and records it as unacknowledged only
afterwards, in the worker; a worker killed in between loses the message, although its events
were answered 204. So the receiver writes each batch twice in one ``MULTI``: onto the ingest
queue, and into this ledger (a hash of messages by task id, and a sorted set of when each batch's
oldest delivery was received). The ingest task removes its batch once the batch is committed (or
dead-lettered, so a batch that cannot be stored cannot hold the ledger forever).

A batch is pushed again only when it is lost: neither waiting in the queue nor held by a worker.
The receiver makes each message's delivery tag its task id, so whether a worker holds a batch is
one look at kombu's ``unacked`` hash; a worker that dies while holding one is kombu's to redeliver
(``pipeline.ingest.held_deliveries`` keeps what live workers hold from being redelivered). What is
waiting cannot be looked up by id without reading the queue, so ``find_lost`` first counts, in one
atomic script: batches in the ledger but not held, against the queue's length. Only when the
ledger has more (a batch vanished between ``BRPOP`` and kombu's bookkeeping), and still does on
the next look, is the queue read to name the missing ones, which go back on its consuming end:
they are older than anything waiting. A backlog of any length therefore creates no extra work.

The ledger also tells the sequencer which deliveries are still on their way: a gap is not
declared lost while a batch received before its reorder window closed waits to be stored
(``sequencing_horizon``), so a backlog of ingest tasks reads as late, not as lost messages. The
receive time of a batch is never moved, whatever happens to its message.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import redis

from pipeline.stores import is_redis, redis_url

logger = logging.getLogger(__name__)

MESSAGES = "pipeline:ingest:ledger"
"""Hash: task id → the broker message as pushed."""
PUSHED_AT = "pipeline:ingest:ledger:pushed"
"""Sorted set: task id → when the batch's oldest delivery was received, in ms since the epoch."""
UNACKED = "unacked"
"""Kombu's hash of delivered, unacknowledged messages by delivery tag (its default key)."""
SUSPECTS = "pipeline:ingest:ledger:suspect-ids"
"""Set: task ids the last look found neither waiting nor held."""

_COUNT_UNSEEN = """
local unseen = 0
for _, id in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('HEXISTS', KEYS[2], id) == 0 then unseen = unseen + 1 end
end
return {unseen, redis.call('LLEN', KEYS[3])}
"""
_TAG = re.compile(rb'"delivery_tag":\s*"([^"]+)"')
SCAN_CHUNK = 200


def oldest_received_ms(items: Sequence[Sequence[Any]], default: int) -> int:
    """When a batch's oldest item was received (``default`` if none says): every door's items
    end with their receive time in ms (``[body, received ms]`` for webhooks)."""
    return min((item[-1] for item in items if isinstance(item[-1], int)), default=default)


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
    """Drop a stored (or dead-lettered) batch from the ledger (called by the ingest task)."""
    pipe = client.pipeline(transaction=False)
    pipe.hdel(MESSAGES, task_id)
    pipe.zrem(PUSHED_AT, task_id)
    pipe.srem(SUSPECTS, task_id)
    pipe.execute()


_clients: dict[str, redis.Redis] = {}


def client_for(broker: str) -> redis.Redis:
    """This process's client for a Redis ``broker``."""
    client = _clients.get(broker)
    if client is None:
        client = _clients[broker] = redis.Redis.from_url(redis_url(broker), socket_timeout=5)
    return client


def settle_stored(broker: str, task_id: str) -> None:
    """``settle`` through this process's client for a Redis ``broker`` (nothing for others).

    A failure is logged, not raised: the batch is stored, and pushing it again later would
    store nothing.
    """
    if not is_redis(broker):
        return
    try:
        settle(client_for(broker), task_id)
    except redis.RedisError as exc:
        logger.warning("ingest ledger not updated task=%s error=%r", task_id, exc)


def sequencing_horizon(
    broker: str, hold_s: float = 0.0, other_than: str | None = None, now_ms: int | None = None
) -> int | None:
    """How far gap declarations may go (``pipeline.sequencing.rules``'s ``horizon_ms``): when the
    oldest delivery of a batch received but not yet stored (but ``other_than``, the one being
    stored) arrived; held back at most ``hold_s`` if that is > 0. None when nothing is pending or
    the broker keeps no ledger (declarations then follow the clock alone). A ledger that cannot be
    read (the broker is down) holds every declaration: the batches it would name are exactly what
    an outage hides, and the next batch or tick asks again.
    """
    if not is_redis(broker):
        return None
    try:
        oldest = oldest_unstored_ms(client_for(broker), other_than)
    except redis.RedisError as exc:
        logger.warning("ingest ledger not read, gaps wait error=%r", exc)
        oldest = 0
    if oldest is None or hold_s <= 0:
        return oldest
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return max(oldest, now_ms - int(hold_s * 1000))


def count_unseen(client: redis.Redis, queue: str) -> tuple[int, int]:
    """Atomically: (batches in the ledger that no worker holds, messages waiting in ``queue``).

    Every unheld batch is waiting unless it was lost, so the first exceeds the second by the
    number lost (or taken off the queue this very moment, not yet recorded by its worker).
    """
    unseen, waiting = cast(Any, client.eval(_COUNT_UNSEEN, 3, MESSAGES, UNACKED, queue))
    return int(unseen), int(waiting)


def waiting_tags(client: redis.Redis, queue: str) -> Iterator[bytes]:
    """The delivery tags of the messages waiting in ``queue``, read in chunks."""
    start = 0
    while True:
        chunk = cast(list[bytes], client.lrange(queue, start, start + SCAN_CHUNK - 1))
        for message in chunk:
            match = _TAG.search(message, max(0, len(message) - 4096))  # properties come last
            if match is None:
                match = _TAG.search(message)
            if match is not None:
                yield match.group(1)
        if len(chunk) < SCAN_CHUNK:
            return
        start += SCAN_CHUNK


def find_lost(client: redis.Redis, queue: str) -> list[str]:
    """Task ids of batches lost between the queue and a worker: seen missing twice in a row.

    Cheap while nothing is missing (``count_unseen``). Otherwise the queue is read to name the
    batches neither waiting nor held; those also missing at the previous look are lost (a batch
    only being taken off the queue is recorded by its worker within milliseconds).
    """
    unseen, waiting = count_unseen(client, queue)
    if unseen <= waiting:
        client.delete(SUSPECTS)
        return []
    present = {tag.decode() for tag in waiting_tags(client, queue)}
    ids = [task_id.decode() for task_id in cast(list[bytes], client.hkeys(MESSAGES))]
    pipe = client.pipeline(transaction=False)
    for task_id in ids:
        pipe.hexists(UNACKED, task_id)
    held = pipe.execute()
    missing = [i for i, h in zip(ids, held, strict=True) if not h and i not in present]
    before = {key.decode() for key in cast(set[bytes], client.smembers(SUSPECTS))}
    pipe = client.pipeline(transaction=True)
    pipe.delete(SUSPECTS)
    if missing:
        pipe.sadd(SUSPECTS, *missing)
    pipe.execute()
    return [task_id for task_id in missing if task_id in before]


def resend_lost(client: redis.Redis, queue: str) -> int:
    """Push lost batches (``find_lost``) onto the consuming end of ``queue``; return how many."""
    resent = 0
    for task_id in find_lost(client, queue):
        message = client.hget(MESSAGES, task_id)
        if message is None or client.hexists(UNACKED, task_id):
            continue  # stored or taken meanwhile (a copy of a stored batch would store nothing)
        pipe = client.pipeline(transaction=True)
        pipe.rpush(queue, message)  # older than anything waiting: it goes first
        pipe.srem(SUSPECTS, task_id)
        pipe.execute()
        resent += 1
    if resent:
        logger.warning("ingest batches lost between queue and worker pushed again count=%d", resent)
    return resent
