"""Webhook delivery as Momento did it: one POST per message, 5 s timeout, never retried.

Deliveries run concurrently on the emulator's event loop, so their order is not promised (as with
Momento). Faults (drop, delay, duplicate, reorder) are applied here before the POST; the body's
``publish_timestamp`` is taken when the POST is actually made. Each delivery is logged at DEBUG
only; at INFO a summary of each webhook's counters comes once a minute while it is active.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import httpx

from pipeline.emulator.faults import FaultPlan, FaultRegistry
from pipeline.emulator.loop import BackgroundLoop
from pipeline.emulator.poster import WebhookPoster
from pipeline.emulator.webhooks import WebhookRegistry, build_body, headers

logger = logging.getLogger(__name__)

SUMMARY_INTERVAL_S = 60.0


@dataclass(frozen=True)
class Delivery:
    """One message to POST to the webhook of (cache, topic)."""

    cache: str
    topic: str
    sequence_number: int
    event_timestamp_ms: int
    text: str


@dataclass
class DeliveryStats:
    """Counters of one webhook's deliveries."""

    attempted: int = 0
    delivered: int = 0
    failed: int = 0
    timed_out: int = 0
    dropped: int = 0
    duplicated: int = 0
    overloaded: int = 0


class Dispatcher:
    """Schedules and sends webhook POSTs on a BackgroundLoop; ``submit`` is thread-safe."""

    def __init__(
        self,
        loop: BackgroundLoop,
        registry: WebhookRegistry,
        faults: FaultRegistry[Delivery],
        *,
        timeout_s: float = 5.0,
        max_pending: int = 10_000,
        reorder_flush_s: float = 1.0,
    ) -> None:
        self._loop = loop
        self._registry = registry
        self._faults = faults
        self._timeout_s = timeout_s
        self._max_pending = max_pending
        self._reorder_flush_s = reorder_flush_s
        self._pending = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._flush_timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._chains: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._stats: defaultdict[tuple[str, str], DeliveryStats] = defaultdict(DeliveryStats)
        self._client: WebhookPoster | None = None
        self._reported: dict[tuple[str, str], DeliveryStats] = {}
        self._summary_timer: asyncio.TimerHandle | None = None

    async def open(self) -> None:
        """Create the HTTP client (must run on the loop)."""
        self._client = WebhookPoster(
            timeout_s=self._timeout_s, max_connections=200, max_keepalive=50
        )
        self._summary_timer = self._loop.loop.call_later(SUMMARY_INTERVAL_S, self._summarise)

    async def aclose(self) -> None:
        """Abandon what is in flight and close the HTTP client (must run on the loop)."""
        if self._summary_timer is not None:
            self._summary_timer.cancel()
        for timer in self._flush_timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def submit(self, delivery: Delivery) -> None:
        """Hand a published message to the loop (called from gRPC threads)."""
        self._loop.call_soon(self._accept, delivery)

    def stats(self, cache: str, topic: str) -> DeliveryStats:
        """A snapshot of the counters of (cache, topic)."""
        return dataclasses.replace(self._stats[(cache, topic)])

    def all_stats(self) -> dict[tuple[str, str], DeliveryStats]:
        """Snapshots of every webhook's counters."""
        return {key: dataclasses.replace(value) for key, value in list(self._stats.items())}

    def _summarise(self) -> None:
        """Log what each webhook did since the last summary, if anything."""
        for key, stats in list(self._stats.items()):
            before = self._reported.get(key, DeliveryStats())
            if stats == before:
                continue
            self._reported[key] = dataclasses.replace(stats)
            logger.info(
                "webhook deliveries cache=%s topic=%s last_s=%d attempted=%d delivered=%d "
                "failed=%d timed_out=%d dropped=%d duplicated=%d overloaded=%d",
                *key,
                SUMMARY_INTERVAL_S,
                *(
                    getattr(stats, field.name) - getattr(before, field.name)
                    for field in dataclasses.fields(DeliveryStats)
                ),
            )
        self._summary_timer = self._loop.loop.call_later(SUMMARY_INTERVAL_S, self._summarise)

    def _accept(self, delivery: Delivery) -> None:
        plan = self._faults.plan(delivery.cache, delivery.topic)
        if plan is None:
            self._spawn([delivery], 0.0, ordered=False)
            return
        self._release(plan, plan.reorder(delivery))
        self._arm_flush(plan, delivery)

    def _release(self, plan: FaultPlan[Delivery], items: list[Delivery]) -> None:
        """Apply drop/duplicate to released items and send them (in this order if reordering)."""
        jobs: list[Delivery] = []
        for item in items:
            decision = plan.decide()
            stats = self._stats[(item.cache, item.topic)]
            if decision.copies == 0:
                stats.dropped += 1
            stats.duplicated += max(decision.copies - 1, 0)
            jobs.extend([item] * decision.copies)
        if jobs:
            self._spawn(jobs, plan.spec.delay_ms / 1000.0, ordered=plan.spec.reorder_window > 1)

    def _arm_flush(self, plan: FaultPlan[Delivery], delivery: Delivery) -> None:
        key = (delivery.cache, delivery.topic)
        timer = self._flush_timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if plan.holding:
            self._flush_timers[key] = self._loop.loop.call_later(
                self._reorder_flush_s, self._flush, plan, key
            )

    def _flush(self, plan: FaultPlan[Delivery], key: tuple[str, str]) -> None:
        self._flush_timers.pop(key, None)
        self._release(plan, plan.drain())

    def _spawn(self, jobs: list[Delivery], delay_s: float, *, ordered: bool) -> None:
        """Start deliveries: concurrently, or (reordering) one after another per topic.

        Reordered deliveries go out sequentially so the receiver sees the shuffled order
        itself, not whatever order concurrent connections happen to land in.
        """
        admitted = []
        for job in jobs:
            if self._pending >= self._max_pending:
                self._stats[(job.cache, job.topic)].overloaded += 1
            else:
                self._pending += 1
                admitted.append(job)
        if not admitted:
            return
        # time.monotonic, not loop.time: uvloop's clock is cached per iteration and in whole ms,
        # so a delay measured on it can end a little before delay_s of real time has passed.
        due = time.monotonic() + delay_s
        key = (admitted[0].cache, admitted[0].topic)
        batches = [admitted] if ordered else [[job] for job in admitted]
        for batch in batches:
            previous = self._chains.get(key) if ordered else None
            task = self._loop.loop.create_task(self._send(batch, due, previous))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            if ordered:
                self._chains[key] = task
                task.add_done_callback(lambda done: self._forget_chain(key, done))

    def _forget_chain(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._chains.get(key) is task:
            del self._chains[key]

    async def _send(
        self, jobs: list[Delivery], due: float, previous: asyncio.Task[None] | None
    ) -> None:
        remaining = len(jobs)
        try:
            if previous is not None:
                await asyncio.wait([previous])
            while (wait_s := due - time.monotonic()) > 0:
                await asyncio.sleep(wait_s)
            for job in jobs:
                await self._post(job)
                remaining -= 1
                self._pending -= 1
        finally:
            self._pending -= remaining

    async def _post(self, delivery: Delivery) -> None:
        hook = self._registry.get(delivery.cache, delivery.topic)
        if hook is None or self._client is None:
            return
        body = build_body(
            cache=delivery.cache,
            topic=delivery.topic,
            event_timestamp_ms=delivery.event_timestamp_ms,
            publish_timestamp_ms=time.time_ns() // 1_000_000,
            sequence_number=delivery.sequence_number,
            text=delivery.text,
        )
        stats = self._stats[(delivery.cache, delivery.topic)]
        stats.attempted += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout_s):
                status = await self._client.post(hook.url, body, headers(body, hook.secret))
        except (TimeoutError, httpx.TimeoutException):
            stats.timed_out += 1
            logger.warning(
                "webhook timed out cache=%s topic=%s seq=%d after_s=%.1f",
                delivery.cache,
                delivery.topic,
                delivery.sequence_number,
                time.monotonic() - started,
            )
            return
        except httpx.HTTPError as exc:
            stats.failed += 1
            logger.warning(
                "webhook failed cache=%s topic=%s seq=%d error=%s",
                delivery.cache,
                delivery.topic,
                delivery.sequence_number,
                type(exc).__name__,
            )
            return
        if 200 <= status < 300:
            stats.delivered += 1
            logger.debug(
                "webhook delivered cache=%s topic=%s seq=%d status=%d",
                delivery.cache,
                delivery.topic,
                delivery.sequence_number,
                status,
            )
        else:
            stats.failed += 1
            logger.warning(
                "webhook refused cache=%s topic=%s seq=%d status=%d",
                delivery.cache,
                delivery.topic,
                delivery.sequence_number,
                status,
            )
