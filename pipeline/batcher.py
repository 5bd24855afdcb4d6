"""Group commit: requests arriving close together share one broker message.

Each webhook request waits on a future that resolves only when the broker has accepted the batch
holding its event; a request answered 2xx is therefore durable. Sending one broker message per
request costs ~1 ms of CPU each and caps a receiver at a few hundred requests/s; one message per
batch makes that cost per batch instead.

Memory is bounded: at most ``max_pending`` events wait at once; past that a request is refused
(503) at once rather than queued behind a broker that is not keeping up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline import metrics

logger = logging.getLogger(__name__)

Item = Any
SendBatch = Callable[[Sequence[Item]], None]


class Overloaded(Exception):
    """Too many events are already waiting for the broker."""


class BrokerUnavailable(Exception):
    """The broker did not accept the batch in time."""


class GroupCommitter:
    """Collects items into batches and hands each batch to ``send`` on a worker thread."""

    def __init__(
        self,
        send: SendBatch,
        *,
        max_batch: int = 500,
        wait_s: float = 0.002,
        max_pending: int = 20000,
        timeout_s: float = 3.0,
        max_concurrent_sends: int = 4,
    ) -> None:
        self._send = send
        self.max_batch = max_batch
        self.wait_s = wait_s
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

    async def submit(self, item: Item) -> None:
        """Return once ``item`` is in the broker; raise Overloaded or BrokerUnavailable."""
        if self._pending >= self.max_pending or self._closing:
            raise Overloaded(f"{self._pending} events already waiting for the broker")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        now = time.perf_counter()
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
            if self.wait_s and len(self._queue) < self.max_batch and not self._closing:
                await asyncio.sleep(self.wait_s)
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
            if items:  # every request of the batch may have timed out while it waited
                await loop.run_in_executor(self._executor, self._send, items)
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
