"""The HTTP client of webhook deliveries: keep-alive HTTP/1.1 on asyncio, parsed by httptools.

httpx cost about 1 ms of CPU per POST here (its request/response models, anyio and the pure-Python
h11 parser), more than all of the emulator's gRPC work for the same message. A POST over a pooled
connection of ``FastPool`` costs about a tenth of that. Only plain ``http://`` URLs without
credentials and with no proxy in the environment take that path; ``https://``, proxied URLs and
URLs with credentials still go through httpx, whose TLS, proxy and auth handling is not repeated.

What the receiver sees does not change: the request bytes are the ones httpx sends (its own
``build_request`` makes the fixed headers), connections are reused the same way (at most
``max_connections`` open, ``max_keepalive`` idle, idle ones dropped after 5 s), errors are raised as
httpx's exception types, and nothing is ever retried.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import httptools
import httpx

KEEPALIVE_EXPIRY_S = 5.0  # httpx's default
_PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")
_TEMPLATE_CACHE_SIZE = 1024


def _environment_proxied() -> bool:
    """True when httpx (trust_env) could route plain http through a proxy from the environment."""
    return any(os.environ.get(name) for name in _PROXY_VARIABLES)


@dataclass(frozen=True)
class _Template:
    """The request bytes of one (url, header names), but for the caller's values and the body."""

    host: str
    port: int
    head: bytes  # request line and httpx's fixed headers (Host, Accept, ...), CRLF-terminated
    names: tuple[bytes, ...]  # the caller's header names, as given

    def render(self, headers: Mapping[str, str], body: bytes) -> bytes:
        parts = [self.head]
        for name, value in zip(self.names, headers.values(), strict=True):
            parts += (name, b": ", value.encode("ascii"), b"\r\n")
        parts += (b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body)
        return b"".join(parts)


def _template(client: httpx.AsyncClient, url: str, names: tuple[str, ...]) -> _Template:
    """Let httpx build a request to ``url`` and keep the parts that do not vary per delivery."""
    request = client.build_request("POST", url, headers=dict.fromkeys(names, ""), content=b"")
    varying = {name.lower().encode() for name in names} | {b"content-length"}
    lines = [b"POST " + request.url.raw_path + b" HTTP/1.1\r\n"]
    lines += [
        name + b": " + value + b"\r\n"
        for name, value in request.headers.raw
        if name.lower() not in varying
    ]
    return _Template(
        host=request.url.raw_host.decode("ascii"),
        port=request.url.port or 80,
        head=b"".join(lines),
        names=tuple(name.encode("ascii") for name in names),
    )


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[int] | None = None
        self._status = 0  # of the final (non-1xx) response once its headers are in, else 0
        self._delimited = False  # that response has a Content-Length or is chunked

    def send(self, data: bytes, waiter: asyncio.Future[int]) -> None:
        """Write one request; ``waiter`` gets the response status (or an httpx error)."""
        assert self.transport is not None
        self._waiter = waiter
        self._status = 0
        self._delimited = False
        self.transport.write(data)

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.close()  # bytes nobody asked for: the connection's state is unknown
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        self.reusable = False
        return None  # let the transport close; connection_lost settles a pending request

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._waiter is None:
            return
        if self._status and not self._delimited:
            self._succeed(self._status)  # a body delimited by the end of the connection
        elif exc is not None:
            self._fail(httpx.ReadError(str(exc) or type(exc).__name__))
        else:
            self._fail(httpx.RemoteProtocolError("Server disconnected without sending a response."))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._delimited = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status >= 200:
            self._status = status
            if status in (204, 304):
                self._delimited = True
        else:
            self._delimited = False

    def on_message_complete(self) -> None:
        if not self._status:
            return  # an informational (1xx) response: the final one follows
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._succeed(self._status)

    def _succeed(self, status: int) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(status)

    def _fail(self, error: Exception) -> None:
        self.reusable = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class FastPool:
    """Keep-alive HTTP/1.1 connections to plain-http hosts; use on one event loop only."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_keepalive: int,
        keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S,
    ) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._max_keepalive = max_keepalive
        self._expiry_s = keepalive_expiry_s
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._idle_count = 0
        self._busy: set[_Connection] = set()

    async def post(self, template: _Template, data: bytes) -> int:
        """Send one rendered request and return the response status; never retried."""
        loop = asyncio.get_running_loop()
        async with self._slots:
            key = (template.host, template.port)
            connection = self._checkout(key, loop.time())
            if connection is None:
                connection = await self._connect(loop, template)
            self._busy.add(connection)
            done = False
            try:
                waiter: asyncio.Future[int] = loop.create_future()
                connection.send(data, waiter)
                status = await waiter
                done = True
            finally:
                self._busy.discard(connection)
                if done and connection.reusable and self._idle_count < self._max_keepalive:
                    connection.idle_since = loop.time()
                    self._idle.setdefault(key, []).append(connection)
                    self._idle_count += 1
                else:
                    connection.close()
        return status

    def close(self) -> None:
        """Close every connection (requests in flight fail)."""
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        self._idle_count = 0
        for connection in list(self._busy):
            connection.close()

    def _checkout(self, key: tuple[str, int], now: float) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            if connection.reusable and now - connection.idle_since < self._expiry_s:
                return connection
            connection.close()
        return None

    @staticmethod
    async def _connect(loop: asyncio.AbstractEventLoop, template: _Template) -> _Connection:
        try:
            _, connection = await loop.create_connection(_Connection, template.host, template.port)
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return connection


class WebhookPoster:
    """POSTs for the dispatcher: ``FastPool`` for plain http, httpx for everything else.

    Create, use and close it on one event loop.
    """

    def __init__(self, *, timeout_s: float, max_connections: int, max_keepalive: int) -> None:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_keepalive
        )
        self._client = httpx.AsyncClient(timeout=timeout_s, limits=limits)
        self._fast = FastPool(max_connections=max_connections, max_keepalive=max_keepalive)
        self._direct = not _environment_proxied()
        self._templates: dict[tuple[str, tuple[str, ...]], _Template | None] = {}

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST ``body`` with ``headers`` to ``url``; the response status, or an httpx error."""
        names = tuple(headers)
        try:
            template = self._templates[(url, names)]
        except KeyError:
            template = self._remember(url, names)
        if template is None:
            response = await self._client.post(url, content=body, headers=headers)
            return response.status_code
        return await self._fast.post(template, template.render(headers, body))

    async def aclose(self) -> None:
        """Close every connection of both clients."""
        self._fast.close()
        await self._client.aclose()

    def _remember(self, url: str, names: tuple[str, ...]) -> _Template | None:
        template = None
        parsed = httpx.URL(url)
        if self._direct and parsed.scheme == "http" and not parsed.userinfo:
            template = _template(self._client, url, names)  # (httpx turns userinfo into auth)
        if len(self._templates) >= _TEMPLATE_CACHE_SIZE:
            self._templates.clear()
        self._templates[(url, names)] = template
        return template
