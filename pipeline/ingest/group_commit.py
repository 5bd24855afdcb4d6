"""Group commit: requests arriving close together share one broker message.

Each webhook request waits on a future that resolves only when the broker has accepted the batch
holding its event; a request answered 2xx is therefore durable. Sending one broker message per
request costs ~1 ms of CPU each and caps a receiver at a few hundred requests/s; one message per
batch makes that cost per batch instead.

How long a batch collects first is ``spacing``'s pure policy: it adapts to the workers.

Memory is bounded: at most ``max_pending`` events wait at once; past that a request is refused
(503) at once rather than queued behind a broker that is not keeping up.

How a batch reaches the broker is ``pipeline.ingest.transports``'s concern.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, cast

from pipeline import metrics
from pipeline.ingest.spacing import Backlog, Spacing

logger = logging.getLogger(__name__)

Item = Any
SendBatch = Callable[[Sequence[Item]], None]
"""A blocking send, run on a worker thread (Celery's producer)."""


class AsyncSender(Protocol):
    """A send that runs on the event loop itself (no thread hand-off per batch); it may return
    the ``Backlog`` it found."""

    def __call__(self, items: Sequence[Item]) -> Awaitable[Backlog | None]: ...

    async def aclose(self) -> None:
        """Release connections (called once the batcher has stopped)."""


class Overloaded(Exception):
    """Too many events are already waiting for the broker."""


class BrokerUnavailable(Exception):
    """The broker did not accept the batch in time."""


class GroupCommitter:
    """Collects items into batches and hands each batch to ``send`` (on a thread if blocking)."""

    def __init__(
        self,
        send: SendBatch | AsyncSender,
        *,
        max_batch: int = 500,
        wait_s: float = 0.002,
        max_wait_s: float = 0.02,
        interval_s: float = 0.0,
        backlog_wait_s: float = 0.0,
        max_pending: int = 20000,
        timeout_s: float = 3.0,
        max_concurrent_sends: int = 4,
    ) -> None:
        self._send = send
        on_loop = inspect.iscoroutinefunction(send) or inspect.iscoroutinefunction(
            type(send).__call__
        )
        self._send_async = cast(AsyncSender, send) if on_loop else None
        self._send_blocking = None if on_loop else cast(SendBatch, send)
        self.max_batch = max_batch
        self.spacing = Spacing(wait_s, max_wait_s, interval_s, backlog_wait_s)
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self._queue: list[tuple[Item, asyncio.Future[None], float]] = []
        # Futures in submission order with their deadlines: one reaper task fails the late ones,
        # cheaper than a wait_for(shield(...)) (a timer, two futures and callbacks) per request.
        self._deadlines: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._pending = 0
        # asyncio primitives bind to a loop on first use, not creation (Python >= 3.10).
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrent_sends)
        self._sends: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_concurrent_sends, thread_name_prefix="enqueue")
        self._closing = False

    @property
    def pending(self) -> int:
        """Events submitted and not yet settled."""
        return self._pending

    async def start(self) -> None:
        """Start the flusher and the reaper on the running loop."""
        self._flusher = asyncio.create_task(self._run(), name="group-commit")
        self._reaper = asyncio.create_task(self._reap(), name="group-commit-timeouts")

    async def stop(self) -> None:
        """Send what is queued, wait for sends in flight, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._flusher is not None:
            await self._flusher
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        self._executor.shutdown(wait=True)
        aclose = getattr(self._send, "aclose", None)
        if aclose is not None:
            await aclose()

    async def submit(self, item: Item) -> None:
        """Return once ``item`` is in the broker; raise Overloaded or BrokerUnavailable."""
        if self._pending >= self.max_pending or self._closing:
            raise Overloaded(f"{self._pending} events already waiting for the broker")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        now = time.perf_counter()
        self.spacing.arrived(now)
        self._queue.append((item, future, now))
        self._deadlines.append((now + self.timeout_s, future))
        self._pending += 1
        metrics.IN_FLIGHT.inc()
        if len(self._queue) == 1 or len(self._queue) >= self.max_batch:
            self._wakeup.set()
        try:
            await future
        finally:
            self._pending -= 1
            metrics.IN_FLIGHT.dec()

    def current_wait_s(self) -> float:
        """How long the next batch collects, from now (``Spacing.wait_s_at``)."""
        wait_s = self.spacing.wait_s_at(time.perf_counter())
        metrics.BATCH_WAIT.set(wait_s)
        return wait_s

    async def _reap(self) -> None:
        """Fail requests whose batch the broker has not accepted within ``timeout_s``."""
        period_s = min(0.05, self.timeout_s / 10)
        while True:
            await asyncio.sleep(period_s)
            now = time.perf_counter()
            deadlines = self._deadlines
            while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now):
                _, future = deadlines.popleft()
                if not future.done():  # a late accept of its batch changes nothing now
                    late = f"broker did not accept the batch in {self.timeout_s} s"
                    future.set_exception(BrokerUnavailable(late))

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._queue and self._closing:
                return
            wait_s = self.current_wait_s()
            if wait_s and len(self._queue) < self.max_batch and not self._closing:
                await asyncio.sleep(wait_s)
            self.spacing.flushed(time.perf_counter())
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                await self._slots.acquire()
                task = asyncio.create_task(self._send_batch(batch))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)

    async def _send_batch(self, batch: list[tuple[Item, asyncio.Future[None], float]]) -> None:
        loop = asyncio.get_running_loop()
        items = [item for item, future, _ in batch if not future.done()]
        try:
            if not items:  # every request of the batch timed out while it waited
                pass
            elif self._send_async is not None:
                backlog = await self._send_async(items)
                # The lateness report itself lasts HOLD_MS: log only its changes.
                if backlog is not None and self.spacing.learned(backlog, time.perf_counter()):
                    spacing = self.spacing
                    state = "runs late: spacing" if spacing.lagging else "caught up: back to"
                    spacing_ms = (
                        spacing.max_wait_s if spacing.lagging else spacing.interval_s
                    ) * 1000
                    logger.info("workflow stage %s batches %.0f ms apart", state, spacing_ms)
            elif self._send_blocking is not None:
                await loop.run_in_executor(self._executor, self._send_blocking, items)
        except Exception as exc:
            metrics.BROKER_ERRORS.inc()
            logger.warning("batch not accepted by broker size=%d error=%r", len(items), exc)
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(BrokerUnavailable(str(exc)))
        else:
            now = time.perf_counter()
            if items:
                metrics.BATCH_SIZE.observe(len(items))
            for _, future, started in batch:
                if not future.done():
                    metrics.ENQUEUE_SECONDS.observe(now - started)
                    future.set_result(None)
        finally:
            self._slots.release()
