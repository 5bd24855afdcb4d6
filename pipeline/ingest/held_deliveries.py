"""A live worker keeps what it holds from being redelivered; a dead one's work comes back fast.

Kombu's Redis transport records each delivered message in ``unacked`` with the time it was
delivered (``unacked_index``) and hands it to another worker once that time is older than the
visibility timeout, whether or not its worker still runs it. So the timeout had to exceed the
longest a healthy worker can hold a message (a long task, a retry countdown), and a killed
worker's messages waited that long. Here a thread in each worker re-stamps the messages its
consumer holds every ``HEARTBEAT_S``: the visibility timeout now measures how long the holder
has been gone, not how long the work takes, so it can be short (``PIPELINE_VISIBILITY_TIMEOUT_S``)
and long tasks are never run twice.

Workers that consume the ingest queue also look for receiver batches lost between the queue and
a worker (``pipeline.ingest.ledger.resend_lost``), one worker at a time, every ``LOOK_S``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import redis
from celery import bootsteps

from pipeline.config import get_settings
from pipeline.ingest import ledger as ingest_ledger
from pipeline.ingest.transports import INGEST_QUEUE
from pipeline.stores import broker_url, is_redis, redis_url

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
"""How often a worker re-stamps the messages it holds."""
LOOK_S = 2.0
"""How often (across all workers) the ingest ledger is checked for lost batches."""
LOOK_LOCK = "pipeline:ingest:ledger:look"


def restamp(client: redis.Redis, index_key: str, tags: tuple[str, ...], now: float) -> None:
    """Mark ``tags`` as delivered at ``now`` in kombu's unacked index (only those still in it)."""
    if tags:
        client.zadd(index_key, dict.fromkeys(tags, now), xx=True)


def look_for_lost(client: redis.Redis, queue: str) -> int:
    """``resend_lost`` on ``queue`` unless another worker looked within ``LOOK_S``."""
    if not client.set(LOOK_LOCK, b"1", nx=True, px=int(LOOK_S * 1000) - 100):
        return 0
    return ingest_ledger.resend_lost(client, queue)


def refuse_when_detached(connparams: Callable[..., Any]) -> Callable[..., Any]:
    """Kombu's Redis ``Channel._connparams``, raising a connection error (not AttributeError)
    once the channel's broker connection is gone.

    After a broker loss a task that finishes still acks its message on the old channel, whose
    transport is already detached: kombu then builds a new pool from ``None`` and the
    AttributeError ended the whole worker (exit 0; the chaos broker scenario). As a connection
    error it is what kombu and Celery already handle: the ack is logged as failed, the message
    stays in ``unacked`` and comes back after the visibility timeout, and storing it again
    changes nothing (batches are idempotent).
    """

    @functools.wraps(connparams)
    def guarded(channel: Any, *args: Any, **kwargs: Any) -> Any:
        transport = getattr(channel, "connection", None)
        if transport is None or getattr(transport, "client", None) is None:
            raise redis.exceptions.ConnectionError("the channel's broker connection is closed")
        return connparams(channel, *args, **kwargs)

    return guarded


def guard_detached_channels() -> None:
    """Install ``refuse_when_detached`` on kombu's Redis channels (once)."""
    from kombu.transport import redis as kombu_redis

    if not getattr(kombu_redis.Channel._connparams, "pipeline_guarded", False):
        guarded = refuse_when_detached(kombu_redis.Channel._connparams)
        guarded.pipeline_guarded = True  # type: ignore[attr-defined]
        kombu_redis.Channel._connparams = guarded


class KeepHeld(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker consumer step: the re-stamping thread (and the lost-batch look on ingest workers)."""

    requires: ClassVar[set[str]] = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        guard_detached_channels()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, c: Any) -> None:
        url = broker_url(get_settings())
        consumer = c.task_consumer
        if not is_redis(url) or consumer is None:
            return
        queues = {queue.name for queue in consumer.queues}
        channel = consumer.channel
        ingest_queue = INGEST_QUEUE if INGEST_QUEUE in queues else None
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run,
            args=(url, channel.qos, channel.unacked_index_key, ingest_queue),
            name="keep-held",
            daemon=True,
        )
        self._thread.start()

    def _run(self, url: str, qos: Any, index_key: str, ingest_queue: str | None) -> None:
        client = redis.Redis.from_url(redis_url(url), socket_timeout=5, socket_connect_timeout=2)
        next_look = 0.0
        try:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    held = _held(qos)
                    restamp(client, index_key, held, time.time())
                    if ingest_queue is not None and time.monotonic() >= next_look:
                        next_look = time.monotonic() + LOOK_S
                        look_for_lost(client, ingest_queue)
                except redis.RedisError as exc:  # the broker is down: the next beat tries again
                    logger.warning("held deliveries not re-stamped error=%r", exc)
        finally:
            client.close()

    def stop(self, c: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _held(qos: Any) -> tuple[str, ...]:
    """The delivery tags ``qos`` holds, read from another thread (a copy made under the GIL)."""
    for _ in range(3):
        try:
            return tuple(str(tag) for tag in tuple(qos._delivered))
        except RuntimeError:  # changed size during the copy: read again
            continue
    return ()
