"""Subscriptions that survive the SDK's traps: ``ResilientSubscription``, ``Message``, ``Gap``.

The SDK (1.29.1) has subscription traps (MOMENTO.md E): a 5 s default stream deadline, an
iterator that busy-spins on a finished stream, no reconnect, and heartbeats and discontinuities
that never reach the caller. ``ResilientSubscription`` (and ``ResilientSubscriptionAsync`` in
``subscriptions_async``) use the SDK only to open a stream, then read the gRPC call themselves:
an ended stream is noticed at once, a silent one is cancelled by a watchdog, and both are
reopened with resume (last + 1, page). Numbers that could not be recovered are reported as
``Gap`` values, never invented.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Self

from momento import (
    TopicClient,
)
from momento.responses import (
    TopicSubscribe,
)

from pipeline.errors import MomentoError
from pipeline.outbound.momento_client import to_error

logger = logging.getLogger(__name__)


# -- subscription values and gap tracking --------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One topic message as received."""

    cache: str
    topic: str
    value: str | bytes
    sequence_number: int
    sequence_page: int


@dataclass(frozen=True)
class Gap:
    """Messages that were published but could not be received.

    ``skipped``: numbers first_missing..last_missing on ``sequence_page`` never arrived.
    ``reset``: the topic restarted its numbering; messages from first_missing on the old page
    may have been lost, how many is unknown (last_missing is None).
    """

    cache: str
    topic: str
    sequence_page: int
    first_missing: int
    last_missing: int | None
    reason: Literal["skipped", "reset"]


class _Tracker:
    """Continuity of (page, number): finds gaps and duplicates, and where to resume."""

    def __init__(self, cache: str, topic: str, resume_at: int, resume_page: int) -> None:
        self.cache, self.topic = cache, topic
        self.next_seq: int | None = resume_at if resume_at > 0 else None
        self.page: int | None = resume_page if resume_at > 0 and resume_page else None
        self._start = (resume_at, resume_page)
        self.duplicates = 0

    def resume_point(self) -> tuple[int, int]:
        if self.next_seq is None:
            return self._start
        return self.next_seq, self.page or 0

    def observe(self, seq: int, page: int) -> tuple[list[Gap], bool]:
        """Gaps revealed by item (seq, page), and whether the item is new (not a duplicate)."""
        gaps: list[Gap] = []
        if self.page is not None and page != self.page and self.next_seq is not None:
            gaps.append(Gap(self.cache, self.topic, self.page, self.next_seq, None, "reset"))
            self.next_seq = 1
        if self.next_seq is not None:
            if seq < self.next_seq:
                self.duplicates += 1
                return gaps, False
            if seq > self.next_seq:
                gaps.append(Gap(self.cache, self.topic, page, self.next_seq, seq - 1, "skipped"))
        self.next_seq, self.page = seq + 1, page
        return gaps, True


def _message(cache: str, topic: str, raw: Any) -> Message | None:
    item = raw.item
    kind = item.value.WhichOneof("kind")
    if kind is None:
        return None
    value = item.value.text if kind == "text" else item.value.binary
    return Message(cache, topic, value, item.topic_sequence_number, item.sequence_page)


def _events(tracker: _Tracker, raw: Any) -> list[Message | Gap]:
    """Subscription events for one wire message (heartbeats and discontinuities give none)."""
    kind = raw.WhichOneof("kind")
    if kind == "discontinuity":
        d = raw.discontinuity
        logger.info(
            "discontinuity cache=%s topic=%s last=%d new=%d page=%d",
            tracker.cache,
            tracker.topic,
            d.last_topic_sequence,
            d.new_topic_sequence,
            d.new_sequence_page,
        )
    if kind != "item":
        return []
    message = _message(tracker.cache, tracker.topic, raw)
    if message is None:
        return []
    gaps, new = tracker.observe(message.sequence_number, message.sequence_page)
    return [*gaps, message] if new else list(gaps)


def _backoff_s(attempt: int) -> float:
    return float(min(0.1 * 2**attempt, 2.0))


def _describe(exc: BaseException) -> str:
    """A gRPC status name when there is one (RpcError), else the exception type."""
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            return str(getattr(code(), "name", code()))
        except Exception:  # a half-built RpcError; fall back to its type
            pass
    return type(exc).__name__


# -- resilient subscriptions ---------------------------------------------------------------------


class _Base:
    """State shared by the sync and async subscriptions."""

    def __init__(
        self,
        cache: str,
        topic: str,
        *,
        resume_at: int,
        resume_page: int,
        stall_timeout_s: float,
        reconnect_timeout_s: float,
    ) -> None:
        if stall_timeout_s <= 0 or reconnect_timeout_s <= 0:
            raise ValueError("stall_timeout_s and reconnect_timeout_s must be > 0")
        self.cache, self.topic = cache, topic
        self._tracker = _Tracker(cache, topic, resume_at, resume_page)
        self._stall_timeout_s = stall_timeout_s
        self._reconnect_timeout_s = reconnect_timeout_s
        self._failure: MomentoError | None = None
        self.reconnects = 0

    @property
    def duplicates(self) -> int:
        """Items received twice (after a resume) and not passed on."""
        return self._tracker.duplicates

    @property
    def resume_point(self) -> tuple[int, int]:
        """(sequence number, page) a new subscription should resume at."""
        return self._tracker.resume_point()

    def _subscribe_args(self) -> dict[str, Any]:
        seq, page = self._tracker.resume_point()
        return {
            "cache_name": self.cache,
            "topic_name": self.topic,
            "resume_at_topic_sequence_number": seq,
            "resume_at_topic_sequence_page": page,
        }

    def _checked(self, response: Any) -> Any:
        if isinstance(response, TopicSubscribe.Error):
            raise to_error(response, f"subscribe to {self.cache}/{self.topic}")
        return response

    def _give_up(self, started: float, exc: MomentoError) -> None:
        if time.monotonic() - started > self._reconnect_timeout_s:
            raise MomentoError(
                f"subscription to {self.cache}/{self.topic} lost for more than "
                f"{self._reconnect_timeout_s:g} s: {exc}",
                code=exc.code,
                transient=True,
            ) from exc

    def _reopened(self) -> None:
        self.reconnects += 1
        seq, page = self._tracker.resume_point()
        logger.info(
            "subscription reopened cache=%s topic=%s resume_at=%d page=%d reconnects=%d",
            self.cache,
            self.topic,
            seq,
            page,
            self.reconnects,
        )


def _unsubscribe(sub: Any) -> None:
    if sub is None:
        return
    try:
        sub.unsubscribe()
    except Exception:  # the call may already be gone; nothing else to release
        logger.debug("unsubscribe failed", exc_info=True)


class ResilientSubscription(_Base):
    """A sync subscription that survives stream ends and restarts; yields Message and Gap.

    A reader thread reads the gRPC call directly (never the SDK iterator, which spins on a
    finished call) and a watchdog cancels a stream silent for ``stall_timeout_s``; either way the
    reader reopens with resume. After ``reconnect_timeout_s`` without a stream it gives up and
    ``poll``/iteration raise MomentoError. ``close()`` may be called from any thread.
    """

    def __init__(
        self,
        client: TopicClient,
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
        self._events: queue.Queue[Message | Gap] = queue.Queue(buffer_size)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sub: Any = None
        self._reading_since: float | None = None
        self._threads = [
            threading.Thread(target=self._read_loop, name=f"sub-read-{topic}", daemon=True),
            threading.Thread(target=self._watch, name=f"sub-watch-{topic}", daemon=True),
        ]

    def start(self) -> Self:
        """Open the first stream (MomentoError if that fails) and start reading; idempotent."""
        if self._threads[0].ident is not None:
            return self
        self._sub = self._checked(self._client.subscribe(**self._subscribe_args()))
        for thread in self._threads:
            thread.start()
        return self

    def poll(self, timeout_s: float) -> Message | Gap | None:
        """The next event, or None after ``timeout_s``; MomentoError once it gave up."""
        try:
            return self._events.get(timeout=timeout_s)
        except queue.Empty:
            if self._failure is not None:
                raise self._failure from None
            return None

    def __iter__(self) -> Iterator[Message | Gap]:
        """Events until ``close()``; raises MomentoError once the subscription gave up."""
        while not self._closed.is_set():
            event = self.poll(0.5)
            if event is not None:
                yield event

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop reading and release the stream; safe from any thread (we never use the SDK loop)."""
        self._closed.set()
        _unsubscribe(self._take())
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take(self) -> Any:
        with self._lock:
            sub, self._sub = self._sub, None
        return sub

    def _read_loop(self) -> None:
        try:
            while not self._closed.is_set():
                sub = self._sub
                if sub is None:
                    return
                try:
                    self._reading_since = time.monotonic()
                    raw = sub._client_stream.next()
                except Exception as exc:  # StopIteration or grpc.RpcError: the stream is over
                    self._reading_since = None
                    if self._closed.is_set():
                        return
                    logger.warning(
                        "subscription stream ended cache=%s topic=%s error=%s",
                        self.cache,
                        self.topic,
                        _describe(exc),
                    )
                    self._reopen()
                    continue
                self._reading_since = None
                for event in _events(self._tracker, raw):
                    self._put(event)
        except MomentoError as exc:
            self._failure = exc
            logger.error("subscription failed cache=%s topic=%s", self.cache, self.topic)
        finally:
            _unsubscribe(self._take())

    def _reopen(self) -> None:
        _unsubscribe(self._take())
        started, attempt = time.monotonic(), 0
        while not self._closed.wait(_backoff_s(attempt)):
            attempt += 1
            try:
                sub = self._checked(self._client.subscribe(**self._subscribe_args()))
            except MomentoError as exc:
                self._give_up(started, exc)
                continue
            with self._lock:
                self._sub = sub
            if self._closed.is_set():
                _unsubscribe(self._take())
            else:
                self._reopened()
            return

    def _put(self, event: Message | Gap) -> None:
        while not self._closed.is_set():
            try:
                self._events.put(event, timeout=0.5)
                return
            except queue.Full:
                continue

    def _watch(self) -> None:
        interval_s = min(1.0, self._stall_timeout_s / 4)
        while not self._closed.wait(interval_s) and self._threads[0].is_alive():
            since = self._reading_since
            if since is None or time.monotonic() - since <= self._stall_timeout_s:
                continue
            logger.warning("subscription stalled cache=%s topic=%s", self.cache, self.topic)
            self._reading_since = None
            with self._lock:
                sub = self._sub
            if sub is not None:
                sub._client_stream.cancel()  # the reader's own next() raises, then it reopens
