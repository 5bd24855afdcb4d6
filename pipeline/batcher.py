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
import logging
import time
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
        self._pending = 0
        # asyncio primitives bind to a loop on first use, not creation (Python >= 3.10).
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrent_sends)
        self._sends: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_concurrent_sends, thread_name_prefix="enqueue")
        self._closing = False

    @property
    def pending(self) -> int:
        """Events submitted and not yet settled."""
        return self._pending

    async def start(self) -> None:
        """Start the flusher on the running loop."""
        self._flusher = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Send what is queued, wait for sends in flight, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._flusher is not None:
            await self._flusher
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, item: Item) -> None:
        """Return once ``item`` is in the broker; raise Overloaded or BrokerUnavailable."""
        if self._pending >= self.max_pending or self._closing:
            raise Overloaded(f"{self._pending} events already waiting for the broker")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future, time.perf_counter()))
        self._pending += 1
        metrics.IN_FLIGHT.inc()
        if len(self._queue) == 1 or len(self._queue) >= self.max_batch:
            self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError as exc:
            future.cancel()  # a late result or error now has no one to wait for it
            raise BrokerUnavailable(
                f"broker did not accept the batch in {self.timeout_s} s"
            ) from exc
        finally:
            self._pending -= 1
            metrics.IN_FLIGHT.dec()

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
        items = [item for item, _, _ in batch]
        try:
            await loop.run_in_executor(self._executor, self._send, items)
        except Exception as exc:
            metrics.BROKER_ERRORS.inc()
            logger.warning("batch not accepted by broker size=%d error=%r", len(items), exc)
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(BrokerUnavailable(str(exc)))
        else:
            now = time.perf_counter()
            metrics.BATCH_SIZE.observe(len(items))
            for _, future, started in batch:
                metrics.ENQUEUE_SECONDS.observe(now - started)
                if not future.done():
                    future.set_result(None)
        finally:
            self._slots.release()
