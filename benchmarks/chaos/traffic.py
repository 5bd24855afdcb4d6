"""Webhook traffic: which deliveries, each signed when it is first sent, and a sender that keeps a
rate the way Momento does (one POST per message, concurrent, never retried).

The deliveries are scaleout_bench's: sequence numbers 1..n per topic, interleaved over topics,
about 5% delivered twice byte for byte, shuffled within consecutive groups of 200. A body is
built and signed the first time one of its deliveries is sent (``publish_timestamp`` is then
"now", so the default replay window holds however long a run takes); its duplicate reuses the
bytes. Event times grow with the sequence number, 1 ms apart, so nothing looks like a reset.

The sender runs on its own thread and event loop. Unpaced, it keeps ``connections`` requests in
flight; paced, request i leaves at ``i / rate`` s, over keep-alive connections opened as needed up
to ``connections`` (so a receiver that stalls, say 3 s per 503 while the broker is down, is still
offered the rate, as Momento would offer it). Each request waits at most ``timeout_s``.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.ingest_bench import read_response
from benchmarks.scaleout_bench import delivery_order, webhook_request

Key = tuple[int, int]  # (topic index, sequence number)
NOT_ANSWERED = -1
TRANSPORT_ERROR = 0


@dataclass(frozen=True)
class Plan:
    """The deliveries of one run: ``order[i]`` is the (topic index, seq) of delivery i."""

    cache: str
    topics: int
    per_topic: int
    order: list[Key]
    base_ms: int

    @property
    def distinct(self) -> int:
        """Distinct events (every topic's 1..per_topic)."""
        return self.topics * self.per_topic

    def topic(self, index: int) -> str:
        """The Momento topic name of topic ``index``."""
        return f"t-{index}"


def make_plan(
    cache: str, events: int, topics: int, seed: int, duplicates: float = 0.05, window: int = 200
) -> Plan:
    """``events`` distinct events over ``topics`` topics (rounded down to whole topics)."""
    per_topic = max(1, events // topics)
    order = delivery_order(topics, per_topic, duplicates, window, random.Random(seed))
    return Plan(cache, topics, per_topic, order, int(time.time() * 1000) - per_topic)


class Requests:
    """Delivery i's HTTP request, built and signed on first use; a duplicate gets the same bytes."""

    def __init__(self, plan: Plan, secret: str) -> None:
        self.plan = plan
        self.secret = secret
        self._built: dict[Key, bytes] = {}

    def __call__(self, index: int) -> bytes:
        key = self.plan.order[index]
        request = self._built.get(key)
        if request is None:
            t, seq = key
            body = json.dumps(
                {
                    "cache": self.plan.cache,
                    "topic": self.plan.topic(t),
                    "event_timestamp": self.plan.base_ms + seq,
                    "publish_timestamp": int(time.time() * 1000),
                    "topic_sequence_number": seq,
                    "token_id": "",
                    "text": f"m {self.plan.topic(t)} {seq}",
                },
                separators=(",", ":"),
            ).encode()
            request = self._built[key] = webhook_request(body, self.secret)
        return request


@dataclass
class Progress:
    """What the sender has seen so far; read from other threads while it runs."""

    total: int
    statuses: array.array[int] = field(init=False)
    sent_at: array.array[float] = field(init=False)  # monotonic; 0 until sent
    answered_at: array.array[float] = field(init=False)  # monotonic; 0 until answered
    errors: Counter[str] = field(default_factory=Counter)  # transport errors by kind
    answered: int = 0
    started_at: float | None = None
    finished_at: float | None = None

    def __post_init__(self) -> None:
        self.statuses = array.array("i", [NOT_ANSWERED]) * self.total
        self.sent_at = array.array("d", [0.0]) * self.total
        self.answered_at = array.array("d", [0.0]) * self.total

    def answers(self) -> Counter[int]:
        """How many deliveries got each status (0: transport error, -1: never sent)."""
        return Counter(self.statuses)

    def acked(self, order: list[Key], before: float | None = None) -> set[Key]:
        """Events with a delivery answered 2xx (by monotonic time ``before``, if given)."""
        return {
            order[i]
            for i, status in enumerate(self.statuses)
            if 200 <= status < 300 and (before is None or self.answered_at[i] <= before)
        }


class _Pool:
    """Keep-alive connections to the receiver, at most ``size`` in use at once.

    A connection idle for ``IDLE_S`` is closed rather than reused: uvicorn closes keep-alive
    connections idle for 5 s, and a request written into one it is closing is never read.
    """

    IDLE_S = 3.0

    def __init__(self, port: int, size: int, timeout_s: float, errors: Counter[str]) -> None:
        self.port = port
        self.errors = errors
        self.timeout_s = timeout_s
        self.slots = asyncio.Semaphore(size)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    def _take_idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        now = time.monotonic()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if now - since < self.IDLE_S:
                return reader, writer
            writer.close()
        return None

    async def post(self, request: bytes) -> int:
        """Send one request (a slot must be held); its status, or 0 on a transport error.

        If a reused connection turns out closed before any answer, the request goes once more on
        a new connection (the server had closed it: nothing was read); such closes are counted.
        """
        streams = self._take_idle()
        reused = streams is not None
        while True:
            try:
                if streams is None:
                    connect = asyncio.open_connection("127.0.0.1", self.port)
                    streams = await asyncio.wait_for(connect, self.timeout_s)
                streams[1].write(request)
                status = await asyncio.wait_for(read_response(streams[0]), self.timeout_s)
            except (
                OSError,
                asyncio.IncompleteReadError,
                ValueError,
                IndexError,
                TimeoutError,
            ) as e:
                if streams is not None:
                    streams[1].close()
                closed = isinstance(e, asyncio.IncompleteReadError | ConnectionError)
                if reused and closed and not getattr(e, "partial", b""):
                    self.errors[f"{type(e).__name__} on a reused connection (resent)"] += 1
                    streams, reused = None, False
                    continue
                self.errors[type(e).__name__] += 1
                return TRANSPORT_ERROR
            self.idle.append((*streams, time.monotonic()))
            return status

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()


async def _send(
    port: int,
    request_for: Callable[[int], bytes],
    progress: Progress,
    rate: float | None,
    connections: int,
    timeout_s: float,
    stop: threading.Event,
) -> None:
    pool = _Pool(port, connections, timeout_s, progress.errors)
    loop = asyncio.get_running_loop()
    progress.started_at = time.monotonic()
    started = loop.time()
    tasks: set[asyncio.Task[None]] = set()

    async def one(index: int) -> None:
        try:
            progress.sent_at[index] = time.monotonic()
            status = await pool.post(request_for(index))
            progress.statuses[index] = status
            progress.answered_at[index] = time.monotonic()
            progress.answered += 1
        finally:
            pool.slots.release()

    for index in range(progress.total):
        if stop.is_set():
            break
        if rate:
            delay = started + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await pool.slots.acquire()
        task = asyncio.create_task(one(index))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    pool.close()
    progress.finished_at = time.monotonic()


def start_sending(
    port: int,
    request_for: Callable[[int], bytes],
    total: int,
    *,
    rate: float | None = None,
    connections: int = 32,
    timeout_s: float = 30.0,
) -> tuple[Progress, threading.Thread, threading.Event]:
    """Send deliveries 0..total-1 on a background thread; (progress, thread, stop event)."""
    progress = Progress(total)
    stop = threading.Event()

    def run() -> None:
        coro = _send(port, request_for, progress, rate, connections, timeout_s, stop)
        loop_factory = None
        with contextlib.suppress(ImportError):
            import uvloop

            loop_factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(coro)

    thread = threading.Thread(target=run, name="chaos-traffic", daemon=True)
    thread.start()
    return progress, thread, stop
