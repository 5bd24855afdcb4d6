"""The emulator's webhook HTTP client against a scripted raw-socket server: bytes, reuse, errors."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import httpx
import pytest

from pipeline.emulator.loop import new_event_loop
from pipeline.emulator.poster import WebhookPoster
from pipeline.emulator.webhooks import headers

pytestmark = pytest.mark.timeout(60)

NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
Reply = Callable[[socket.socket, bytes], bool]  # send the reply; False closes the connection


def replying(*raw: bytes, keep_open: bool = True) -> Reply:
    def reply(conn: socket.socket, request: bytes) -> bool:
        for chunk in raw:
            conn.sendall(chunk)
        return keep_open

    return reply


class ScriptedServer:
    """Records every request (bytes, connection number) and answers with ``reply``."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[tuple[int, bytes]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._connections = 0
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/momento?x=a b&y=é"

    @property
    def connections(self) -> int:
        return self._connections

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._connections += 1
            number = self._connections
            thread = threading.Thread(target=self._serve, args=(conn, number), daemon=True)
            thread.start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(rest) < length:
                    rest += conn.recv(65536)
                request, buffer = head + b"\r\n\r\n" + rest[:length], rest[length:]
                self.requests.append((number, request))
                if not self.reply(conn, request):
                    return


@pytest.fixture
def server_factory() -> Iterator[Callable[[Reply], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def make(reply: Reply) -> ScriptedServer:
        servers.append(ScriptedServer(reply))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run on the emulator's own kind of loop (uvloop where installed)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)


async def post_all(url: str, bodies: list[bytes], timeout_s: float = 5.0) -> list[Any]:
    """POST each body in turn; the status or the exception of each."""
    poster = WebhookPoster(timeout_s=timeout_s, max_connections=200, max_keepalive=50)
    results: list[Any] = []
    try:
        for body in bodies:
            try:
                async with asyncio.timeout(timeout_s):
                    results.append(await poster.post(url, body, headers(body, "secret")))
            except (httpx.HTTPError, TimeoutError) as exc:
                results.append(exc)
    finally:
        await poster.aclose()
    return results


def test_requests_are_byte_for_byte_what_httpx_sends(
    server_factory: Callable[[Reply], ScriptedServer],
) -> None:
    server = server_factory(replying(NO_CONTENT))
    body = '{"text":"héllo"}'.encode()
    assert run(post_all(server.url, [body])) == [204]
    with httpx.Client() as client:
        assert client.post(server.url, content=body, headers=headers(body, "secret")).is_success
    (_, ours), (_, theirs) = server.requests
    assert ours == theirs
    assert b"momento-signature: " in ours


def test_connections_are_kept_alive_and_reused(
    server_factory: Callable[[Reply], ScriptedServer],
) -> None:
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    server = server_factory(replying(ok))
    assert run(post_all(server.url, [b"1", b"2", b"3"])) == [200, 200, 200]
    assert [number for number, _ in server.requests] == [1, 1, 1]


def test_connection_close_and_http_1_0_open_a_new_connection(
    server_factory: Callable[[Reply], ScriptedServer],
) -> None:
    close = b"HTTP/1.1 202 Accepted\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    server = server_factory(replying(close, keep_open=False))
    assert run(post_all(server.url, [b"1", b"2"])) == [202, 202]
    old = server_factory(replying(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"))
    assert run(post_all(old.url, [b"1", b"2"])) == [200, 200]
    assert [n for n, _ in server.requests] == [1, 2]
    assert [n for n, _ in old.requests] == [1, 2]


def test_chunked_informational_and_close_delimited_responses(
    server_factory: Callable[[Reply], ScriptedServer],
) -> None:
    chunked = b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    informational = b"HTTP/1.1 100 Continue\r\n\r\n"
    server = server_factory(replying(informational, chunked))
    assert run(post_all(server.url, [b"1", b"2"])) == [201, 201]
    assert [n for n, _ in server.requests] == [1, 1]
    until_close = server_factory(replying(b"HTTP/1.1 500 Oops\r\n\r\nbody", keep_open=False))
    assert run(post_all(until_close.url, [b"1"])) == [500]


def test_failures_are_httpx_errors_and_never_retried(
    server_factory: Callable[[Reply], ScriptedServer],
) -> None:
    hang_up = server_factory(replying(keep_open=False))
    [error] = run(post_all(hang_up.url, [b"1"]))
    assert isinstance(error, httpx.RemoteProtocolError)
    assert len(hang_up.requests) == 1
    garbage = server_factory(replying(b"NOT HTTP\r\n\r\n"))
    [error] = run(post_all(garbage.url, [b"1"]))
    assert isinstance(error, httpx.RemoteProtocolError)
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    [error] = run(post_all(f"http://127.0.0.1:{port}/", [b"1"]))
    assert isinstance(error, httpx.ConnectError)


def test_a_request_cut_by_the_timeout_does_not_poison_the_connection_pool(
    server_factory: Callable[[Reply], ScriptedServer],
) -> None:
    calls = 0

    def first_silent(conn: socket.socket, request: bytes) -> bool:
        nonlocal calls
        calls += 1
        if calls > 1:
            conn.sendall(NO_CONTENT)
        return True

    server = server_factory(first_silent)
    first, second = run(post_all(server.url, [b"1", b"2"], timeout_s=0.5))
    assert isinstance(first, TimeoutError)
    assert second == 204
    assert [n for n, _ in server.requests] == [1, 2]


def test_https_proxied_and_credentialed_urls_go_through_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def routes() -> list[bool]:
        poster = WebhookPoster(timeout_s=5, max_connections=10, max_keepalive=5)
        try:
            return [
                poster._remember(url, ("a",)) is not None
                for url in ("http://127.0.0.1:1/x", "https://127.0.0.1:1/x", "http://u:p@h/")
            ]
        finally:
            await poster.aclose()

    assert run(routes()) == [True, False, False]
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    assert run(routes()) == [False, False, False]
