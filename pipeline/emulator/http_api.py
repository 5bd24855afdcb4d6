"""Momento's HTTP API on the local server: scalar cache get/set/delete, topic publish and the
topic long poll, over the same state the gRPC side serves.

Paths, parameters and status codes follow Momento's HTTP API reference: the token comes from the
``Authorization`` header (the raw token, no scheme) or the ``token`` query parameter, never both
(400); an unknown cache is 404 ``Cache Not Found``; a missing key is 404 ``Key Not Found``. Error
bodies are one line of plain text, as Momento's are.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import Callable
from typing import Any, Protocol

from momento_wire_types import cachepubsub_pb2 as pubsub_pb
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pipeline.emulator.state import CacheNotFound, Store, WrongType
from pipeline.emulator.topics import Entry, Mailbox, Topic

logger = logging.getLogger(__name__)

BINARY = "application/octet-stream"


class HttpError(Exception):
    """An answer other than success: status code and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Backend(Protocol):
    """What the HTTP API drives: ``EmulatorServer`` (a protocol, so no import cycle)."""

    @property
    def store(self) -> Store: ...
    @property
    def max_publish_bytes(self) -> int: ...
    @property
    def max_item_bytes(self) -> int: ...
    @property
    def subscriber_queue(self) -> int: ...
    def publish(self, cache: str, topic: str, value: pubsub_pb._TopicValue) -> bool: ...


def _check_token(request: Request, api_key: str | None) -> None:
    header = request.headers.get("authorization")
    query = request.query_params.get("token")
    if header is not None and query is not None:
        raise HttpError(
            400,
            "Provide the token in the Authorization header or the token query parameter, not both",
        )
    token = header if header is not None else query
    if not token:
        raise HttpError(401, "Missing token: send the Authorization header or ?token=")
    if api_key is not None and not hmac.compare_digest(token.encode(), api_key.encode()):
        raise HttpError(401, "Invalid token")


def _key(request: Request) -> bytes:
    key = request.query_params.get("key")
    key_b64 = request.query_params.get("key_base64")
    if key is not None and key_b64 is not None:
        raise HttpError(400, "Provide key or key_base64, not both")
    if key is not None:
        if not key:
            raise HttpError(400, "key must not be empty")
        return key.encode()
    if key_b64 is None:
        raise HttpError(400, "Missing key: send key= or key_base64=")
    try:
        decoded = base64.urlsafe_b64decode(key_b64 + "=" * (-len(key_b64) % 4))
    except (binascii.Error, ValueError) as exc:
        raise HttpError(400, f"key_base64 is not URL-safe base64: {key_b64!r}") from exc
    if not decoded:
        raise HttpError(400, "key_base64 must not be empty")
    return decoded


def _int_param(request: Request, name: str, *, required: bool, minimum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if required:
            raise HttpError(400, f"Missing {name}")
        return 0
    try:
        value = int(raw)
    except ValueError as exc:
        raise HttpError(400, f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise HttpError(400, f"{name} must be >= {minimum}, got {value}")
    return value


def _cache_not_found(cache: str) -> HttpError:
    return HttpError(404, f"Cache Not Found: {cache}")


def _entry_json(entry: Entry) -> dict[str, Any]:
    kind = entry.WhichOneof("kind")
    if kind == "discontinuity":
        d = entry.discontinuity
        return {
            "discontinuity": {
                "last_topic_sequence": d.last_topic_sequence,
                "new_topic_sequence": d.new_topic_sequence,
                "new_sequence_page": d.new_sequence_page,
            }
        }
    item = entry.item
    if item.value.WhichOneof("kind") == "binary":
        value = {"binary": base64.b64encode(item.value.binary).decode()}
    else:
        value = {"text": item.value.text}
    return {
        "item": {
            "topic_sequence_number": item.topic_sequence_number,
            "sequence_page": item.sequence_page,
            "value": value,
        }
    }


async def _wait(topic: Topic, mailbox: Mailbox, timeout_s: float) -> list[Entry]:
    """Entries of ``mailbox`` as soon as there are any, or ``[]`` after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()

    def wake() -> None:
        loop.call_soon_threadsafe(ready.set)

    mailbox.set_listener(wake)
    try:
        await asyncio.wait_for(ready.wait(), timeout_s)
    except TimeoutError:
        pass
    finally:
        mailbox.close()
        topic.detach(mailbox)
    return mailbox.take_now()


def create_http_app(backend: Backend, api_key: str | None, poll_s: float) -> Starlette:
    """The Starlette app serving Momento's HTTP API over ``backend``."""
    store = backend.store

    def handler(
        endpoint: Callable[[Request], Any],
    ) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            try:
                _check_token(request, api_key)
                response: Response = await endpoint(request)
            except HttpError as exc:
                return PlainTextResponse(exc.message, status_code=exc.status)
            return response

        return handle

    async def get_item(request: Request) -> Response:
        cache, key = request.path_params["cache"], _key(request)
        try:
            value = store.get(cache, key)
        except CacheNotFound as exc:
            raise _cache_not_found(cache) from exc
        except WrongType as exc:
            raise HttpError(400, f"Key holds a {exc.kind}, not a scalar value") from exc
        if value is None:
            return PlainTextResponse("Key Not Found", status_code=404)
        return Response(value, media_type=BINARY)

    async def put_item(request: Request) -> Response:
        cache, key = request.path_params["cache"], _key(request)
        ttl_s = _int_param(request, "ttl_seconds", required=True, minimum=1)
        body = await request.body()
        if len(key) + len(body) > backend.max_item_bytes:
            raise HttpError(
                400, f"Item of {len(key) + len(body)} bytes exceeds {backend.max_item_bytes}"
            )
        try:
            store.set(cache, key, body, ttl_s * 1000)
        except CacheNotFound as exc:
            raise _cache_not_found(cache) from exc
        return Response(status_code=204)

    async def delete_item(request: Request) -> Response:
        cache, key = request.path_params["cache"], _key(request)
        try:
            store.delete(cache, key)
        except CacheNotFound as exc:
            raise _cache_not_found(cache) from exc
        return Response(status_code=204)

    async def publish(request: Request) -> Response:
        cache, topic = request.path_params["cache"], request.path_params["topic"]
        body = await request.body()
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media == BINARY:
            value = pubsub_pb._TopicValue(binary=body)
        else:
            try:
                value = pubsub_pb._TopicValue(text=body.decode())
            except UnicodeDecodeError as exc:
                raise HttpError(
                    400, f"Body is not UTF-8 text; send Content-Type: {BINARY} for binary"
                ) from exc
        if len(body) > backend.max_publish_bytes:
            raise HttpError(
                429, f"Message of {len(body)} bytes exceeds {backend.max_publish_bytes}"
            )
        try:
            backend.publish(cache, topic, value)
        except CacheNotFound as exc:
            raise _cache_not_found(cache) from exc
        return Response(status_code=204)

    async def long_poll(request: Request) -> Response:
        cache, name = request.path_params["cache"], request.path_params["topic"]
        resume_at = _int_param(request, "sequence_number", required=False, minimum=0)
        page = _int_param(request, "sequence_page", required=False, minimum=0)
        try:
            topic, mailbox = store.attach(cache, name, resume_at, page, backend.subscriber_queue)
        except CacheNotFound as exc:
            raise _cache_not_found(cache) from exc
        entries = await _wait(topic, mailbox, poll_s)
        return JSONResponse({"items": [_entry_json(entry) for entry in entries]})

    cache_path, topic_path = "/cache/{cache}", "/topics/{cache}/{topic}"
    return Starlette(
        routes=[
            Route(cache_path, handler(get_item), methods=["GET"]),
            Route(cache_path, handler(put_item), methods=["PUT"]),
            Route(cache_path, handler(delete_item), methods=["DELETE"]),
            Route(topic_path, handler(publish), methods=["POST"]),
            Route(topic_path, handler(long_poll), methods=["GET"]),
        ]
    )
