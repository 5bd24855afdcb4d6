"""``ResilientSubscriptionAsync``: the asyncio twin of ``subscriptions.ResilientSubscription``."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Self

from momento import TopicClientAsync

from pipeline.errors import MomentoError
from pipeline.outbound.subscriptions import (
    Gap,
    Message,
    _backoff_s,
    _Base,
    _describe,
    _events,
    _unsubscribe,
)

logger = logging.getLogger(__name__)


class ResilientSubscriptionAsync(_Base):
    """The asyncio twin of ResilientSubscription: a reader task feeds ``poll``/``async for``."""

    def __init__(
        self,
        client: TopicClientAsync,
        cache: str,
        topic: str,
        *,
        resume_at: int = 0,
        resume_page: int = 0,
        stall_timeout_s: float = 60.0,
        reconnect_timeout_s: float = 300.0,
        buffer_size: int = 10_000,
    ) -> None:
        super().__init__(
            cache,
            topic,
            resume_at=resume_at,
            resume_page=resume_page,
            stall_timeout_s=stall_timeout_s,
            reconnect_timeout_s=reconnect_timeout_s,
        )
        self._client = client
        self._events: asyncio.Queue[Message | Gap] = asyncio.Queue(buffer_size)
        self._closed = False
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Self:
        """Open the first stream (MomentoError if that fails) and start the reader; idempotent."""
        if self._task is not None:
            return self
        self._sub = self._checked(await self._client.subscribe(**self._subscribe_args()))
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        return self

    async def poll(self, timeout_s: float) -> Message | Gap | None:
        """The next event, or None after ``timeout_s``; MomentoError once it gave up."""
        if self._events.empty() and self._failure is not None:
            raise self._failure
        try:
            return await asyncio.wait_for(self._events.get(), timeout_s)
        except TimeoutError:
            if self._failure is not None:
                raise self._failure from None
            return None

    def drain(self, limit: int) -> list[Message | Gap]:
        """Up to ``limit`` events already received, without waiting."""
        events: list[Message | Gap] = []
        while len(events) < limit and not self._events.empty():
            events.append(self._events.get_nowait())
        return events

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message | Gap:
        while not self._closed:
            event = await self.poll(0.5)
            if event is not None:
                return event
        raise StopAsyncIteration

    async def close(self) -> None:
        """Stop the reader task and release the stream."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        _unsubscribe(self._sub)
        self._sub = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        try:
            while not self._closed:
                raw = await self._read()
                if raw is None:
                    await self._reopen()
                    continue
                for event in _events(self._tracker, raw):
                    await self._events.put(event)
        except MomentoError as exc:
            self._failure = exc
            logger.error("subscription failed cache=%s topic=%s", self.cache, self.topic)
        finally:
            _unsubscribe(self._sub)
            self._sub = None

    async def _read(self) -> Any:
        """One wire message, or None when the stream ended, failed or stalled."""
        try:
            raw = await asyncio.wait_for(self._sub._client_stream.read(), self._stall_timeout_s)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed or (task is not None and task.cancelling()):
                raise
            raw = None  # the call was cancelled underneath us
        except TimeoutError:
            logger.warning("subscription stalled cache=%s topic=%s", self.cache, self.topic)
            raw = None
        except Exception as exc:  # grpc.aio.AioRpcError: the stream is over
            logger.warning(
                "subscription stream ended cache=%s topic=%s error=%s",
                self.cache,
                self.topic,
                _describe(exc),
            )
            raw = None
        return raw if hasattr(raw, "WhichOneof") else None

    async def _reopen(self) -> None:
        _unsubscribe(self._sub)
        self._sub = None
        started, attempt = time.monotonic(), 0
        while not self._closed:
            await asyncio.sleep(_backoff_s(attempt))
            attempt += 1
            try:
                self._sub = self._checked(await self._client.subscribe(**self._subscribe_args()))
            except MomentoError as exc:
                self._give_up(started, exc)
                continue
            self._reopened()
            return
