"""The webhook receiver: verify, reject, group-commit into the broker, ack.

``POST /webhooks/momento`` is served by a plain ASGI handler (it is the hot path: a framework's
request/response objects cost more than the rest of the request), and so is
``POST /changes/{source}`` (change records, ``pipeline.ingest.changes``), through its own
group commit onto the same ingest queue. The other routes are a small Starlette app:
``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline import metrics
from pipeline.config import Settings
from pipeline.errors import (
    BodyTooLarge,
    InvalidSource,
    MalformedBody,
    RejectedWebhook,
    UnsupportedMediaType,
)
from pipeline.ingest.api_keys import ChangeAuth
from pipeline.ingest.changes import SOURCE_RE, parse_changes
from pipeline.ingest.events import check_timestamps, parse_webhook
from pipeline.ingest.group_commit import (
    AsyncSender,
    BrokerUnavailable,
    GroupCommitter,
    Overloaded,
    SendBatch,
)
from pipeline.ingest.signing import SIGNATURE_HEADER, verify_signature
from pipeline.ingest.transports import CHANGES_TASK, default_sender

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/momento"
CHANGES_PREFIX = "/changes/"
RETRY_AFTER_S = "1"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ReadyCheck = Callable[[], None]

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SIGNATURE = SIGNATURE_HEADER.encode()
_ACCEPTED = metrics.WEBHOOK_REQUESTS.labels("accepted", "")  # labels() per request costs


def default_ready_checks(settings: Settings) -> dict[str, ReadyCheck]:
    """Broker and database reachability, as /readyz reports them."""
    from kombu import Connection

    from pipeline import db
    from pipeline.stores import broker_url

    def broker() -> None:
        with Connection(broker_url(settings), connect_timeout=1) as conn:
            conn.ensure_connection(max_retries=1, timeout=1)

    return {"broker": broker, "database": lambda: db.ping(settings)}


class WebhookReceiver:
    """ASGI app for the receiver; build it with ``create_app``."""

    def __init__(
        self,
        settings: Settings,
        send_batch: SendBatch | AsyncSender,
        ready_checks: dict[str, ReadyCheck],
        collectors: Sequence[Collector] = (),
        send_changes: SendBatch | AsyncSender | None = None,
    ) -> None:
        self.settings = settings
        self.secrets = list(settings.pipeline_webhook_secrets)
        self.max_body = settings.pipeline_max_body_bytes
        self.window_ms = settings.pipeline_replay_window_s * 1000
        self.skew_ms = settings.pipeline_future_skew_s * 1000
        self.batcher = GroupCommitter(
            send_batch,
            max_batch=settings.pipeline_batch_max_events,
            wait_s=settings.pipeline_batch_wait_ms / 1000,
            max_wait_s=settings.pipeline_batch_max_wait_ms / 1000,
            interval_s=settings.pipeline_batch_interval_ms / 1000,
            backlog_wait_s=settings.pipeline_batch_backlog_wait_ms / 1000,
            max_pending=settings.pipeline_max_pending_events,
            timeout_s=settings.pipeline_enqueue_timeout_s,
        )
        self.change_auth = ChangeAuth(
            settings.pipeline_change_api_key_header,
            settings.pipeline_change_api_keys,
            settings.pipeline_change_basic_auth,
        )
        self.max_change_body = settings.pipeline_change_max_body_bytes
        self.change_batcher = GroupCommitter(
            send_changes if send_changes is not None else send_batch,
            max_batch=settings.pipeline_batch_max_events,
            wait_s=settings.pipeline_batch_wait_ms / 1000,
            max_wait_s=settings.pipeline_batch_max_wait_ms / 1000,
            # Change batches cost their worker a few round trips each, whatever their size: while
            # the workers are behind, fewer, fuller batches catch up sooner.
            backlog_wait_s=settings.pipeline_batch_backlog_wait_ms / 1000,
            max_pending=settings.pipeline_max_pending_events,
            timeout_s=settings.pipeline_enqueue_timeout_s,
        )
        self.ready_checks = ready_checks
        # Collectors that query the broker or database on each scrape, kept apart from the
        # process-wide registry so several receivers can live in one process (tests).
        self.scraped = CollectorRegistry(auto_describe=False)
        for collector in collectors:
            self.scraped.register(collector)
        self.routes = Starlette(
            routes=[
                Route("/healthz", self.healthz),
                Route("/readyz", self.readyz),
                Route("/metrics", self.metrics),
                Route("/openapi.json", self.openapi),
            ],
            exception_handlers={HTTPException: self.http_error},
            lifespan=self.lifespan,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == WEBHOOK_PATH:
            await self.webhook(scope, receive, send)
        elif scope["type"] == "http" and scope["path"].startswith(CHANGES_PREFIX):
            await self.changes(scope, receive, send)
        else:
            await self.routes(scope, receive, send)

    @asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        await self.batcher.start()
        await self.change_batcher.start()
        # Everything imported so far lives as long as the process: moved out of the collector's
        # reach, it is not rescanned by every full collection (pauses of tens of ms otherwise).
        gc.collect()
        gc.freeze()
        logger.info("receiver ready secrets=%d path=%s", len(self.secrets), WEBHOOK_PATH)
        yield
        await self.batcher.stop()
        await self.change_batcher.stop()

    async def webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Verify, validate and group-commit one Momento webhook."""
        if scope["method"] != "POST":
            await _method_not_allowed(send)
            return
        received_ms = int(time.time() * 1000)
        try:
            body = await self.read_checked(scope, receive)
            if body is None:
                return  # client went away
            await self.batcher.submit([body.decode("utf-8"), received_ms])
        except RejectedWebhook as exc:
            metrics.WEBHOOK_REQUESTS.labels("rejected", exc.code).inc()
            await _respond(send, exc.status_code, {"error": exc.code, "detail": exc.detail})
            return
        except (Overloaded, BrokerUnavailable) as exc:
            reason = "overloaded" if isinstance(exc, Overloaded) else "broker_unavailable"
            metrics.WEBHOOK_REQUESTS.labels("unavailable", reason).inc()
            await _unavailable(send, reason, exc)
            return
        _ACCEPTED.inc()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def changes(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate, validate and group-commit one body of change records; answer 200 with
        how many records it held once they are durable in the broker."""
        if scope["method"] != "POST":
            await _method_not_allowed(send)
            return
        received_ms = int(time.time() * 1000)
        source = scope["path"][len(CHANGES_PREFIX) :]
        try:
            if not SOURCE_RE.match(source):
                raise InvalidSource(f"source {source!r} must match {SOURCE_RE.pattern}")
            self.change_auth.check(scope["headers"])
            body = await _read_json(scope, receive, self.max_change_body)
            if body is None:
                return  # client went away
            try:
                text = body.decode("utf-8")
                records = parse_changes(text, source)
            except UnicodeDecodeError as exc:
                raise MalformedBody(f"body is not UTF-8: {exc}") from exc
            except RejectedWebhook:
                raise
            except Exception as exc:  # the body's fault whatever it is: a 400, never a 500
                logger.warning("unexpected error validating change records", exc_info=True)
                raise MalformedBody(f"body could not be validated: {type(exc).__name__}") from exc
            await self.change_batcher.submit([source, text, received_ms])
        except RejectedWebhook as exc:
            metrics.CHANGE_REQUESTS.labels("rejected", exc.code).inc()
            await _respond(send, exc.status_code, {"error": exc.code, "detail": exc.detail})
            return
        except (Overloaded, BrokerUnavailable) as exc:
            reason = "overloaded" if isinstance(exc, Overloaded) else "broker_unavailable"
            metrics.CHANGE_REQUESTS.labels("unavailable", reason).inc()
            await _unavailable(send, reason, exc)
            return
        metrics.CHANGE_REQUESTS.labels("accepted", "").inc()
        metrics.CHANGE_RECORDS.inc(len(records))
        await _respond(send, 200, {"records": len(records)})

    async def read_checked(self, scope: Scope, receive: Receive) -> bytes | None:
        """Read the body within the size limit and run every check; raise RejectedWebhook."""
        signature = None
        for name, value in scope["headers"]:
            if name == _SIGNATURE:
                signature = value.decode("latin-1")
        body = await _read_json(scope, receive, self.max_body)
        if body is None:
            return None
        verify_signature(body, signature, self.secrets)
        try:
            event = parse_webhook(body.decode("utf-8"))
            check_timestamps(event, time.time() * 1000, self.window_ms, self.skew_ms)
        except UnicodeDecodeError as exc:
            raise MalformedBody(f"body is not UTF-8: {exc}") from exc
        except RejectedWebhook:
            raise
        except Exception as exc:
            # Whatever the checks did not foresee is still the body's fault: a 400, never a 500.
            logger.warning("unexpected error validating a webhook body", exc_info=True)
            raise MalformedBody(f"body could not be validated: {type(exc).__name__}") from exc
        return body

    async def healthz(self, _request: Request) -> Response:
        """The process is up."""
        return JSONResponse({"status": "ok"})

    async def readyz(self, _request: Request) -> Response:
        """Broker and database reachable: 200, else 503 naming what failed."""
        results = await asyncio.gather(
            *(self._check(name, check) for name, check in self.ready_checks.items())
        )
        report = dict(results)
        ok = all(value == "ok" for value in report.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": report}, 200 if ok else 503
        )

    async def _check(self, name: str, check: ReadyCheck) -> tuple[str, str]:
        try:
            await asyncio.wait_for(asyncio.to_thread(check), 3.0)
        except Exception as exc:
            return name, f"error: {type(exc).__name__}: {exc}"[:300]
        return name, "ok"

    async def metrics(self, _request: Request) -> Response:
        """Prometheus text exposition: process metrics, then broker/database gauges."""
        own = generate_latest()
        scraped = await asyncio.to_thread(generate_latest, self.scraped)
        return Response(own + scraped, media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, _request: Request) -> Response:
        """The OpenAPI document of the receiver (pipeline/openapi.json)."""
        return Response(OPENAPI_JSON, media_type="application/json")

    async def http_error(self, _request: Request, exc: Exception) -> Response:
        """Unknown routes and wrong methods answer JSON like every other error.

        The exception's headers are kept: Starlette puts the ``Allow`` of a 405 there.
        """
        assert isinstance(exc, HTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "detail": exc.detail}, exc.status_code, exc.headers)


OPENAPI_JSON = resources.files("pipeline").joinpath("openapi.json").read_bytes()


async def _read_json(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """A JSON body of at most ``limit`` bytes (None if the client went away); raises
    UnsupportedMediaType or BodyTooLarge."""
    content_type = None
    declared = 0
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"content-length" and value.isdigit():
            declared = int(value)
    if content_type is None or not content_type.split(b";")[0].strip().lower().endswith(b"json"):
        raise UnsupportedMediaType(f"content-type must be application/json, got {content_type!r}")
    if declared > limit:
        raise BodyTooLarge(f"body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _method_not_allowed(send: Send) -> None:
    await _respond(
        send, 405, {"error": "method_not_allowed", "detail": "use POST"}, [(b"allow", b"POST")]
    )


async def _unavailable(send: Send, reason: str, exc: Exception) -> None:
    await _respond(
        send, 503, {"error": reason, "detail": str(exc)}, [(b"retry-after", RETRY_AFTER_S.encode())]
    )


async def _respond(
    send: Send,
    status: int,
    payload: dict[str, Any],
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *_JSON_HEADERS,
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(
    settings: Settings,
    send_batch: SendBatch | AsyncSender | None = None,
    ready_checks: dict[str, ReadyCheck] | None = None,
    collectors: Sequence[Collector] | None = None,
    send_changes: SendBatch | AsyncSender | None = None,
) -> WebhookReceiver:
    """Build the receiver for ``settings`` (by default enqueueing to its broker).

    Change records go through ``send_changes`` (by default their own task on the same queue);
    a test that fakes ``send_batch`` alone gets its fake for both.
    """
    if send_changes is None:
        send_changes = default_sender(settings, CHANGES_TASK) if send_batch is None else send_batch
    return WebhookReceiver(
        settings,
        send_batch or default_sender(settings),
        ready_checks if ready_checks is not None else default_ready_checks(settings),
        collectors if collectors is not None else default_collectors(settings),
        send_changes,
    )


def default_collectors(settings: Settings) -> list[Collector]:
    """Gauges read at scrape time: queue depths (broker) and pipeline state (database)."""
    from pipeline.ingest.queue_depth import QueueDepthCollector
    from pipeline.metrics import DatabaseCollector

    return [QueueDepthCollector(settings), DatabaseCollector(settings)]


def app_from_env() -> WebhookReceiver:
    """Factory for ``uvicorn --factory pipeline.ingest.receiver:app_from_env`` (env Settings)."""
    from pipeline.config import get_settings

    return create_app(get_settings())
