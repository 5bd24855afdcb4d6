"""How a group-committed batch reaches the broker: one ``tasks.ingest.store_webhooks`` message.

With a Redis broker by one ``LPUSH`` on the event loop, recorded in the ingest ledger in the same
``MULTI`` (``redis_sender``); with any other through Celery's producer on a thread
(``celery_sender``).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio
from celery import Celery
from kombu.utils.uuid import uuid

from pipeline.celery_app import configure, create_app
from pipeline.config import Settings
from pipeline.ingest import ledger as ingest_ledger
from pipeline.ingest.group_commit import AsyncSender, Item, SendBatch
from pipeline.ingest.spacing import Backlog
from pipeline.stores import broker_url, is_redis, redis_url
from pipeline.workflows import backpressure


class RedisPush:
    """Sends a batch as one ``LPUSH`` of an encoded broker message, on the running event loop.

    Celery's producer spends ~2 ms of CPU per message and runs on a thread whose hand-offs delay
    the 204s; a prepared message and one ``LPUSH`` cost a fraction of that. Redis replies once
    the command is in its append-only file (synced first with ``appendfsync always``), so an
    accepted batch is exactly as durable as through Celery. With ``ledger`` the batch also goes
    into the ingest ledger in the same ``MULTI`` (``pipeline.ingest.ledger``), so that a worker
    killed while taking it from the queue cannot lose it. ``encode`` returns the message's task
    id and bytes.
    """

    def __init__(
        self,
        url: str,
        key: str,
        encode: Callable[[Sequence[Item]], tuple[str, bytes]],
        connect_timeout_s: float = 1.0,
        timeout_s: float = 2.0,
        ledger: bool = False,
    ) -> None:
        self.key = key
        self.encode = encode
        self.ledger = ledger
        self._client = redis.asyncio.Redis.from_url(
            redis_url(url), socket_connect_timeout=connect_timeout_s, socket_timeout=timeout_s
        )

    async def __call__(self, items: Sequence[Item]) -> Backlog:
        task_id, message = self.encode(items)
        pipe = self._client.pipeline(transaction=self.ledger)
        pipe.lpush(self.key, message)
        if self.ledger:
            oldest_ms = ingest_ledger.oldest_received_ms(items, int(time.time() * 1000))
            ingest_ledger.record(pipe, task_id, message, oldest_ms)
        pipe.exists(backpressure.LAGGING)  # a read in the same round trip
        results = await pipe.execute()
        return Backlog(int(results[0]), bool(results[-1]))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


INGEST_TASK = "tasks.ingest.store_webhooks"
SUBSCRIBED_TASK = "tasks.ingest.store_subscribed"
"""The listener's batches of subscription items (``pipeline.sources``): same queue, same path."""
CHANGES_TASK = "tasks.changes.store"
"""The receiver's batches of change records (``POST /changes/{source}``): same queue."""
INGEST_QUEUE = "ingest"


def _receiver_celery(settings: Settings) -> Celery:
    """The receiver's own Celery app: its broker settings (fail fast) are not the workers'."""
    app = create_app()
    configure(app, settings)
    # Celery reads $CELERY_BROKER_URL before conf.broker_url; send where ``settings`` say.
    app.conf.broker_write_url = broker_url(settings)
    return app


def redis_sender(settings: Settings, task: str = INGEST_TASK) -> RedisPush:
    """Send each batch as one ``task`` message (default `store_webhooks`) with a single LPUSH
    (Redis brokers).

    The message is what Celery's producer would put on the ``ingest`` list (Celery's task
    protocol 2 from ``as_task_v2``, in kombu's Redis envelope), so workers cannot tell the
    difference; only the producer's per-message overhead and its thread are gone.
    """
    app = _receiver_celery(settings)

    def encode(items: Sequence[Any]) -> tuple[str, bytes]:
        task_id = uuid()
        message = app.amqp.as_task_v2(
            task_id,
            task,
            args=[list(items)],
            ignore_result=True,
            argsrepr=f"[<{len(items)} events>]",  # no bodies in monitoring events
        )
        properties = {
            **message.properties,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": INGEST_QUEUE},
            "priority": 0,
            "body_encoding": "base64",
            # The task id: whether a worker holds the batch is then one look at kombu's
            # unacked hash (``pipeline.ingest.ledger``).
            "delivery_tag": task_id,
        }
        envelope = {
            "body": base64.b64encode(json.dumps(message.body).encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": message.headers,
            "properties": properties,
        }
        return task_id, json.dumps(envelope).encode()

    return RedisPush(broker_url(settings), INGEST_QUEUE, encode, ledger=True)


def celery_sender(settings: Settings, task: str = INGEST_TASK) -> SendBatch:
    """Send a batch as one ``task`` message through Celery (any broker); fail fast."""
    app = _receiver_celery(settings)
    app.conf.broker_connection_timeout = 1.0
    # A "task-sent" event per batch is a second broker round trip on the hot path; workers'
    # received/started/succeeded events still show every batch in Flower.
    app.conf.task_send_sent_event = False
    policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}

    def send(items: Sequence[Any]) -> None:
        app.send_task(
            task,
            args=[list(items)],
            queue=INGEST_QUEUE,
            retry=True,
            retry_policy=policy,
            # Nobody reads the result: without this the Redis result backend subscribes to a
            # result channel per batch (a round trip each, and subscriptions that pile up).
            ignore_result=True,
        )

    return send


def default_sender(settings: Settings, task: str = INGEST_TASK) -> SendBatch | AsyncSender:
    """A direct LPUSH for Redis brokers, Celery's producer for any other."""
    if is_redis(broker_url(settings)):
        return redis_sender(settings, task)
    return celery_sender(settings, task)
