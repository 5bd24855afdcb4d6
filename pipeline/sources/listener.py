"""``pipeline listen``: consume subscribed topics into the same ingest path as webhooks.

Each topic this listener holds a lease on (``pipeline.sources.leases``) is read by a
``TopicConsumer``: a ``ResilientSubscriptionAsync`` (reopens ended, failed or silent streams
with resume; heartbeats keep it from looking silent) whose items go through the receiver's group
commit into the broker as ``tasks.ingest.store_subscribed`` batches, then to Postgres, the
sequencer and the routes like any webhook. A topic's position advances only once every item
before it is durable in the broker (``GroupCommitter.submit`` returns then), and is stored in
its lease every round, so whichever listener holds the topic next resumes there; the few items
read again after a crash are stored once (their key is page and number). Numbers the server no
longer held come as a discontinuity (a jump); the sequencer records them as a lost range, and a
new page as a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from momento import TopicClientAsync
from sqlalchemy import Engine

from pipeline.config import Settings
from pipeline.db import get_engine
from pipeline.errors import MomentoError, PipelineError
from pipeline.ingest.group_commit import BrokerUnavailable, GroupCommitter, Overloaded
from pipeline.ingest.transports import SUBSCRIBED_TASK, default_sender
from pipeline.outbound.momento_client import topic_client_async
from pipeline.outbound.subscriptions import Gap, Message
from pipeline.outbound.subscriptions_async import ResilientSubscriptionAsync
from pipeline.sources import leases
from pipeline.sources.items import encode_item
from pipeline.sources.leases import Position, TopicKey
from pipeline.workflows.routes import routes_for

logger = logging.getLogger(__name__)

CHUNK = 500
"""Most items of one topic handed to the group commit at once."""
STALL_S = 15.0
"""A stream with no message (not even a heartbeat) for this long is reopened."""
REFUSED_PAUSE_S = 30.0
"""A topic Momento refused (subscription limit) is left to other listeners this long."""
BACKOFF_MAX_S = 5.0


class Refused(PipelineError):
    """Momento refused the subscription: the account's subscription limit is reached."""


@dataclass
class TopicConsumer:
    """Reads one topic into the group commit; ``position`` is its durable resume point."""

    client: TopicClientAsync
    committer: GroupCommitter
    cache: str
    topic: str
    position: Position
    received: int = 0
    gaps: int = 0

    async def run(self) -> None:
        """Consume until cancelled; reopen from the durable position after any failure."""
        attempt = 0
        while True:
            seq, page = self.position
            sub = ResilientSubscriptionAsync(
                self.client,
                self.cache,
                self.topic,
                resume_at=seq,
                resume_page=page,
                stall_timeout_s=STALL_S,
                reconnect_timeout_s=60.0,
            )
            try:
                await sub.start()
                attempt = 0
                await self._consume(sub)
            except MomentoError as exc:
                if exc.code == "LIMIT_EXCEEDED_ERROR":
                    raise Refused(str(exc)) from exc
                logger.warning(
                    "subscription failed cache=%s topic=%s error=%s", self.cache, self.topic, exc
                )
            except (BrokerUnavailable, Overloaded) as exc:
                logger.warning(
                    "items not accepted by the broker, resuming cache=%s topic=%s at=%d error=%s",
                    self.cache,
                    self.topic,
                    self.position[0],
                    exc,
                )
            finally:
                await sub.close()
            attempt += 1
            await asyncio.sleep(min(BACKOFF_MAX_S, 0.1 * 2**attempt))

    async def _consume(self, sub: ResilientSubscriptionAsync) -> None:
        while True:
            first = await sub.poll(1.0)
            if first is None:
                continue
            events = [first, *sub.drain(CHUNK - 1)]
            messages = [event for event in events if isinstance(event, Message)]
            for gap in (event for event in events if isinstance(event, Gap)):
                self.gaps += 1
                logger.info(
                    "subscription gap cache=%s topic=%s page=%d from=%d to=%s reason=%s",
                    gap.cache,
                    gap.topic,
                    gap.sequence_page,
                    gap.first_missing,
                    gap.last_missing,
                    gap.reason,
                )
            if not messages:
                continue
            now_ms = int(time.time() * 1000)
            items = [
                encode_item(m.cache, m.topic, m.sequence_page, m.sequence_number, m.value, now_ms)
                for m in messages
            ]
            outcomes = await asyncio.gather(
                *(self.committer.submit(item) for item in items), return_exceptions=True
            )
            failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if failed is not None:
                raise failed
            last = messages[-1]
            self.position = (last.sequence_number + 1, last.sequence_page)
            self.received += len(messages)


class Listener:
    """One ``pipeline listen`` process: leases, one consumer per held topic, one group commit."""

    def __init__(self, settings: Settings, holder: str | None = None) -> None:
        self.settings = settings
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.topics: tuple[TopicKey, ...] = routes_for(settings).subscriptions
        if not self.topics:
            path = settings.pipeline_routes
            raise PipelineError(f"{path} names no [[subscriptions]]: nothing to listen to")
        self.engine: Engine = get_engine(settings)
        self.consumers: dict[TopicKey, tuple[TopicConsumer, asyncio.Task[None]]] = {}
        self.refused: dict[TopicKey, float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Hold leases and consume until ``stop`` is set; then hand every topic back."""
        s = self.settings
        committer = GroupCommitter(
            default_sender(s, SUBSCRIBED_TASK),
            max_batch=s.pipeline_batch_max_events,
            wait_s=s.pipeline_batch_wait_ms / 1000,
            max_wait_s=s.pipeline_batch_max_wait_ms / 1000,
            interval_s=s.pipeline_batch_interval_ms / 1000,
            backlog_wait_s=s.pipeline_batch_backlog_wait_ms / 1000,
            max_pending=s.pipeline_max_pending_events,
            timeout_s=s.pipeline_enqueue_timeout_s,
        )
        await committer.start()
        client = topic_client_async(s, max_subscriptions=len(self.topics) + 10)
        logger.info("listener started holder=%s topics=%d", self.holder, len(self.topics))
        last_ok = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    await self._round(client, committer)
                    last_ok = time.monotonic()
                except Exception as exc:  # Postgres away: leases lapse, so stop reading them
                    logger.warning("lease round failed error=%s", exc)
                    if time.monotonic() - last_ok > leases.LEASE_TTL_S - leases.ROUND_S:
                        await self._stop_all(release=False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), leases.ROUND_S)
        finally:
            await self._stop_all(release=True)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._in_transaction, leases.leave, self.holder)
            await committer.stop()
            await client.close()
            logger.info("listener stopped holder=%s", self.holder)

    async def _round(self, client: TopicClientAsync, committer: GroupCommitter) -> None:
        now = time.monotonic()
        for key, (consumer, task) in list(self.consumers.items()):
            if task.done():  # refused, or a bug: give the topic back
                del self.consumers[key]
                error = task.exception() if not task.cancelled() else None
                if isinstance(error, Refused):
                    self.refused[key] = now + REFUSED_PAUSE_S
                    logger.error(
                        "subscription refused cache=%s topic=%s: the Momento account's "
                        "subscription limit is reached; other topics keep running, "
                        "this one is retried in %.0f s (%s)",
                        key[0],
                        key[1],
                        REFUSED_PAUSE_S,
                        error,
                    )
                elif error is not None:
                    logger.error("consumer failed cache=%s topic=%s", *key, exc_info=error)
                await asyncio.to_thread(
                    self._in_transaction, leases.release, self.holder, key, consumer.position
                )
        excluded = [key for key, until in self.refused.items() if until > now]
        held: dict[TopicKey, Position | None] = {
            key: consumer.position for key, (consumer, _) in self.consumers.items()
        }
        result = await asyncio.to_thread(
            self._in_transaction,
            leases.lease_round,
            self.holder,
            self.topics,
            held,
            excluded=excluded,
        )
        for key in result.lost:
            logger.warning("lease lost cache=%s topic=%s: another listener took it", *key)
            await self._stop(key)
        for key in result.surplus:
            position = await self._stop(key)
            await asyncio.to_thread(
                self._in_transaction, leases.release, self.holder, key, position
            )
        for key in result.taken:
            position = result.held[key]
            consumer = TopicConsumer(client, committer, key[0], key[1], position)
            task = asyncio.create_task(consumer.run(), name=f"listen {key[0]}/{key[1]}")
            self.consumers[key] = (consumer, task)
            logger.info(
                "topic taken cache=%s topic=%s resume_at=%d page=%d listeners=%d",
                key[0],
                key[1],
                position[0],
                position[1],
                result.listeners,
            )

    async def _stop(self, key: TopicKey) -> Position | None:
        entry = self.consumers.pop(key, None)
        if entry is None:
            return None
        consumer, task = entry
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return consumer.position

    async def _stop_all(self, *, release: bool) -> None:
        for key in list(self.consumers):
            position = await self._stop(key)
            if release:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(
                        self._in_transaction, leases.release, self.holder, key, position
                    )

    def _in_transaction(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        with self.engine.begin() as conn:
            return call(conn, *args, **kwargs)
