"""The one module that imports the Momento SDK: clients from Settings, errors, subscriptions.

The SDK (1.29.1) has subscription traps (MOMENTO.md E): a 5 s default stream deadline, an
iterator that busy-spins on a finished stream, no reconnect, and heartbeats and discontinuities
that never reach the caller. ``ResilientSubscription`` and ``ResilientSubscriptionAsync`` use
the SDK only to open a stream, then read the gRPC call themselves: an ended stream is noticed at
once, a silent one is cancelled by a watchdog, and both are reopened with resume (last + 1, page).
Numbers that could not be recovered are reported as ``Gap`` values, never invented.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, Self

from momento import (
    CacheClient,
    CacheClientAsync,
    Configurations,
    CredentialProvider,
    TopicClient,
    TopicClientAsync,
    TopicConfigurations,
)
from momento.errors import MomentoErrorCode
from momento.responses import (
    CacheDelete,
    CacheGet,
    CacheSet,
    CreateCache,
    TopicPublish,
    TopicSubscribe,
)

from pipeline.config import Settings
from pipeline.errors import MomentoError

logger = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = timedelta(days=3650)
"""Topic client deadline: it bounds whole subscription streams, so it must be huge (E.1)."""
PUBLISH_TIMEOUT = timedelta(seconds=10)
"""A sane deadline for clients that only publish."""
DEFAULT_TTL = timedelta(hours=1)
LOCAL_DEFAULT = ("127.0.0.1", 8080)

_TRANSIENT = {
    MomentoErrorCode.TIMEOUT_ERROR,
    MomentoErrorCode.SERVER_UNAVAILABLE,
    MomentoErrorCode.INTERNAL_SERVER_ERROR,
    MomentoErrorCode.CANCELLED_ERROR,
    MomentoErrorCode.CONNECTION_ERROR,
}
_SIZE_LIMITS = ("size limit", "larger than max")


# -- clients -------------------------------------------------------------------------------------


def local_address(settings: Settings) -> tuple[str, int] | None:
    """(host, port) of the local server, or None when settings point at real Momento."""
    if settings.momento_local:
        host, _, port = settings.momento_local.rpartition(":")
        return host, int(port)
    if settings.momento_api_key is not None:
        return None
    return LOCAL_DEFAULT


def credential_provider(settings: Settings) -> CredentialProvider:
    """MOMENTO_LOCAL wins; else MOMENTO_API_KEY (+ MOMENTO_ENDPOINT for v2 keys); else local."""
    local = local_address(settings)
    if local is not None:
        return CredentialProvider.for_momento_local(*local)
    assert settings.momento_api_key is not None
    key = settings.momento_api_key.get_secret_value()
    try:
        if settings.momento_endpoint:
            return CredentialProvider.from_api_key_v2(key, settings.momento_endpoint)
        return CredentialProvider.from_disposable_token(key)
    except Exception as exc:  # the SDK raises its own exception types and plain ones
        hint = "" if settings.momento_endpoint else " (v2 keys also need MOMENTO_ENDPOINT)"
        raise MomentoError(f"MOMENTO_API_KEY is not usable{hint}: {type(exc).__name__}") from exc


def cache_client(settings: Settings, *, default_ttl: timedelta = DEFAULT_TTL) -> CacheClient:
    """A sync CacheClient (constructor, not ``create``: that one crashes without eager connect)."""
    return CacheClient(Configurations.Laptop.latest(), credential_provider(settings), default_ttl)


def cache_client_async(
    settings: Settings, *, default_ttl: timedelta = DEFAULT_TTL
) -> CacheClientAsync:
    """An async CacheClient; create it inside the event loop that will use it."""
    configuration = Configurations.Laptop.latest()
    return CacheClientAsync(configuration, credential_provider(settings), default_ttl)


def _topic_configuration(timeout: timedelta, max_subscriptions: int) -> Any:
    configuration = TopicConfigurations.Default.latest().with_client_timeout(timeout)
    if max_subscriptions:
        configuration = configuration.with_max_subscriptions(max_subscriptions)
    return configuration


def topic_client(
    settings: Settings, *, timeout: timedelta = SUBSCRIBE_TIMEOUT, max_subscriptions: int = 0
) -> TopicClient:
    """A sync TopicClient; the default timeout suits subscribers (PUBLISH_TIMEOUT suits others)."""
    configuration = _topic_configuration(timeout, max_subscriptions)
    return TopicClient(configuration, credential_provider(settings))


def topic_client_async(
    settings: Settings, *, timeout: timedelta = SUBSCRIBE_TIMEOUT, max_subscriptions: int = 0
) -> TopicClientAsync:
    """An async TopicClient; create it inside the event loop that will use it."""
    configuration = _topic_configuration(timeout, max_subscriptions)
    return TopicClientAsync(configuration, credential_provider(settings))


def close_client(client: Any) -> None:
    """Close any SDK client (the sync CacheClient has no ``close``, only ``__exit__``)."""
    close = getattr(client, "close", None)
    if callable(close):
        close()
    else:
        client.__exit__(None, None, None)


# -- errors and one-shot helpers -----------------------------------------------------------------


def to_error(response: Any, action: str) -> MomentoError:
    """Turn an SDK ``*.Error`` response into MomentoError(code=MomentoErrorCode name)."""
    code: MomentoErrorCode = response.error_code
    message = str(response.message)
    transient = code in _TRANSIENT or (
        code is MomentoErrorCode.LIMIT_EXCEEDED_ERROR
        and not any(marker in message.lower() for marker in _SIZE_LIMITS)
    )
    return MomentoError(f"{action} failed: {message}", code=code.name, transient=transient)


def create_cache(client: CacheClient, cache: str) -> bool:
    """Create ``cache``; True if it was created, False if it already existed."""
    response = client.create_cache(cache)
    if isinstance(response, CreateCache.Error):
        raise to_error(response, f"create cache {cache}")
    return isinstance(response, CreateCache.Success)


def publish(client: TopicClient, cache: str, topic: str, value: str | bytes) -> None:
    """Publish once (a blind retry could duplicate the message: Momento never dedupes)."""
    response = client.publish(cache, topic, value)
    if isinstance(response, TopicPublish.Error):
        raise to_error(response, f"publish to {cache}/{topic}")


async def publish_async(
    client: TopicClientAsync, cache: str, topic: str, value: str | bytes
) -> None:
    """Async ``publish``."""
    response = await client.publish(cache, topic, value)
    if isinstance(response, TopicPublish.Error):
        raise to_error(response, f"publish to {cache}/{topic}")


def cache_set(
    client: CacheClient,
    cache: str,
    key: str | bytes,
    value: str | bytes,
    ttl: timedelta | None = None,
) -> None:
    """Set ``key``; ``ttl`` None uses the client's default TTL."""
    response = client.set(cache, key, value, ttl)
    if isinstance(response, CacheSet.Error):
        raise to_error(response, f"set in {cache}")


def cache_get(client: CacheClient, cache: str, key: str | bytes) -> bytes | None:
    """The value of ``key``, or None on a miss."""
    response = client.get(cache, key)
    if isinstance(response, CacheGet.Hit):
        value: bytes = response.value_bytes
        return value
    if isinstance(response, CacheGet.Error):
        raise to_error(response, f"get from {cache}")
    return None


def cache_delete(client: CacheClient, cache: str, key: str | bytes) -> None:
    """Delete ``key`` (a missing key is fine)."""
    response = client.delete(cache, key)
    if isinstance(response, CacheDelete.Error):
        raise to_error(response, f"delete from {cache}")


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
