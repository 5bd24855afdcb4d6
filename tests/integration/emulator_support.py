"""Helpers for tests that drive the emulator with the official SDK.

The SDK's own subscription iterator busy-spins (and leaks memory fast) once its stream ends, and
cannot be interrupted by a normal exception. ``guarded`` watches the call from a thread and, if it
finishes or the deadline passes while the main thread iterates, sends SIGUSR1 to the main thread,
whose handler raises ``StreamGuardTripped`` (a BaseException the SDK's ``except Exception`` lets
through). Iterate SDK subscriptions only in the main thread, inside ``guarded``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from momento import (
    CacheClient,
    CacheClientAsync,
    Configurations,
    CredentialProvider,
    TopicClient,
    TopicClientAsync,
    TopicConfigurations,
)
from momento.responses import TopicSubscribe, TopicSubscriptionItem

LONG = timedelta(days=1)


class StreamGuardTripped(BaseException):
    """The guarded stream ended or its deadline passed while the test was reading it."""


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def credentials(port: int) -> CredentialProvider:
    """SDK credentials for an emulator on 127.0.0.1:port."""
    return CredentialProvider.for_momento_local("127.0.0.1", port)


def cache_client(port: int) -> CacheClient:
    """A sync CacheClient for the emulator."""
    return CacheClient(Configurations.Laptop.latest(), credentials(port), timedelta(minutes=5))


def cache_client_async(port: int) -> CacheClientAsync:
    """An async CacheClient (create it inside the running loop)."""
    config = Configurations.Laptop.latest()
    return CacheClientAsync(config, credentials(port), timedelta(minutes=5))


def topic_client(port: int, max_subscriptions: int = 0) -> TopicClient:
    """A sync TopicClient with a long deadline, so streams do not die at 5 s (MOMENTO.md E.1)."""
    config = TopicConfigurations.Default.latest().with_client_timeout(LONG)
    if max_subscriptions:
        config = config.with_max_subscriptions(max_subscriptions)
    return TopicClient(config, credentials(port))


def topic_client_async(port: int) -> TopicClientAsync:
    """An async TopicClient with a long deadline."""
    config = TopicConfigurations.Default.latest().with_client_timeout(LONG)
    return TopicClientAsync(config, credentials(port))


def subscription(response: Any) -> Any:
    """The subscription of a subscribe response, failing the test on an error."""
    assert isinstance(response, TopicSubscribe.Subscription | TopicSubscribe.SubscriptionAsync), (
        response
    )
    return response


@contextmanager
def guarded(sub: Any, deadline_s: float) -> Iterator[None]:
    """Bound reading ``sub`` in the main thread: trip if its call ends or time runs out."""
    assert threading.current_thread() is threading.main_thread()
    armed = threading.Event()
    armed.set()
    main_ident = threading.main_thread().ident
    assert main_ident is not None

    def trip(signum: int, frame: object) -> None:
        if armed.is_set():
            armed.clear()
            raise StreamGuardTripped(f"stream ended or deadline of {deadline_s} s passed")

    def watch() -> None:
        end = time.monotonic() + deadline_s
        while armed.is_set():
            if sub._client_stream.done() or time.monotonic() > end:
                signal.pthread_kill(main_ident, signal.SIGUSR1)
                return
            time.sleep(0.05)

    previous = signal.signal(signal.SIGUSR1, trip)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        armed.clear()
        watcher.join(1)
        signal.signal(signal.SIGUSR1, previous)


def take(sub: Any, count: int, deadline_s: float = 20.0) -> list[Any]:
    """The next ``count`` text/binary items of a sync SDK subscription, bounded."""
    items = []
    with guarded(sub, deadline_s):
        for _ in range(count):
            items.append(next(sub))
    for item in items:
        assert isinstance(item, TopicSubscriptionItem.Text | TopicSubscriptionItem.Binary), item
    return items


async def take_async(sub: Any, count: int, deadline_s: float = 20.0) -> list[Any]:
    """The next ``count`` items of an async SDK subscription, bounded the same way."""
    items = []
    with guarded(sub, deadline_s):
        async for item in sub:
            items.append(item)
            if len(items) == count:
                break
    for item in items:
        assert isinstance(item, TopicSubscriptionItem.Text | TopicSubscriptionItem.Binary), item
    return items


@dataclass(frozen=True)
class Received:
    """One request the webhook sink got."""

    at: float
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class WebhookSink:
    """A real HTTP endpoint in a thread that records every POST (optionally slow)."""

    def __init__(self, delay_s: float = 0.0, status: int = 204) -> None:
        self.received: list[Received] = []
        self._cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with sink._cond:
                    sink.received.append(Received(time.monotonic(), headers, body))
                    sink._cond.notify_all()
                if delay_s:
                    time.sleep(delay_s)
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the emulator gave up on us first

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/webhooks/momento"

    def __enter__(self) -> WebhookSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        """Wait until at least ``count`` requests arrived (or time is up); returns all so far."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while len(self.received) < count:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.received)


def run(coro: Any, timeout_s: float = 60.0) -> Any:
    """asyncio.run with an overall bound."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))
