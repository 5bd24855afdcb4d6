"""The emulator's admin HTTP API (JSON): webhooks, faults, caches, resets, generated traffic.

Momento managed webhooks through its control plane; no Python SDK can call that, so the emulator
offers this small API instead. It binds the emulator's host (127.0.0.1 by default) and returns
signing secrets, like Momento's putWebhook/getWebhookSecret, so keep it on loopback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.emulator.faults import FaultRegistry, FaultSpec
from pipeline.emulator.generator import Generated, GenerateSpec
from pipeline.emulator.webhooks import Webhook, WebhookRegistry

logger = logging.getLogger(__name__)


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise ValueError(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


class Emulator(Protocol):
    """What the admin API drives: ``EmulatorServer`` (named here so the server may import this
    module without this module importing the server back)."""

    @property
    def address(self) -> str: ...
    @property
    def webhooks(self) -> WebhookRegistry: ...
    @property
    def faults(self) -> FaultRegistry[Any]: ...
    def stats(self) -> dict[str, Any]: ...
    def list_webhooks(self) -> list[Webhook]: ...
    def register_webhook(
        self, cache: str, topic: str, url: str, secret: str | None = None
    ) -> str: ...
    def rotate_webhook_secret(self, cache: str, topic: str) -> str: ...
    def delete_webhook(self, cache: str, topic: str) -> bool: ...
    def set_faults(
        self, cache: str = "*", topic: str = "*", spec: FaultSpec | None = None, **options: Any
    ) -> FaultSpec: ...
    def clear_faults(self) -> None: ...
    def create_cache(self, name: str) -> bool: ...
    def reset_topic(self, cache: str, topic: str) -> int: ...
    @property
    def max_publish_bytes(self) -> int: ...
    def generate(self, cache: str, spec: GenerateSpec) -> Generated: ...


def create_admin_app(emulator: Emulator) -> Starlette:
    """The Starlette app serving the admin API of ``emulator``."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "grpc": emulator.address})

    async def stats(request: Request) -> Response:
        return JSONResponse(emulator.stats())

    async def list_webhooks(request: Request) -> Response:
        return JSONResponse([hook.public() for hook in emulator.list_webhooks()])

    async def put_webhook(request: Request) -> Response:
        cache, topic = request.path_params["cache"], request.path_params["topic"]
        try:
            data = await _json_object(request)
            url = data.get("url")
            secret = data.get("secret")
            if not isinstance(url, str) or not (secret is None or isinstance(secret, str)):
                raise ValueError("url must be a string and secret a string or absent")
            secret = emulator.register_webhook(cache, topic, url, secret)
        except ValueError as exc:
            return _error(400, "invalid_webhook", str(exc))
        return JSONResponse({"cache": cache, "topic": topic, "url": url, "secret": secret})

    async def get_secret(request: Request) -> Response:
        cache, topic = request.path_params["cache"], request.path_params["topic"]
        hook = emulator.webhooks.get(cache, topic)
        if hook is None:
            return _error(404, "webhook_not_found", f"no webhook for {cache}/{topic}")
        return JSONResponse({"cache": cache, "topic": topic, "secret": hook.secret})

    async def rotate_secret(request: Request) -> Response:
        cache, topic = request.path_params["cache"], request.path_params["topic"]
        try:
            secret = emulator.rotate_webhook_secret(cache, topic)
        except KeyError:
            return _error(404, "webhook_not_found", f"no webhook for {cache}/{topic}")
        return JSONResponse({"cache": cache, "topic": topic, "secret": secret})

    async def delete_webhook(request: Request) -> Response:
        cache, topic = request.path_params["cache"], request.path_params["topic"]
        if not emulator.delete_webhook(cache, topic):
            return _error(404, "webhook_not_found", f"no webhook for {cache}/{topic}")
        return Response(status_code=204)

    async def list_faults(request: Request) -> Response:
        specs = emulator.faults.specs()
        return JSONResponse([{"cache": c, "topic": t, **s.to_dict()} for c, t, s in specs])

    async def put_faults(request: Request) -> Response:
        cache, topic = request.path_params["cache"], request.path_params["topic"]
        try:
            spec = emulator.set_faults(
                cache, topic, FaultSpec.from_mapping(await _json_object(request))
            )
        except (ValueError, TypeError) as exc:
            return _error(400, "invalid_faults", str(exc))
        return JSONResponse({"cache": cache, "topic": topic, **spec.to_dict()})

    async def delete_faults(request: Request) -> Response:
        if "cache" not in request.path_params:
            emulator.clear_faults()
            return Response(status_code=204)
        cache, topic = request.path_params["cache"], request.path_params["topic"]
        if not emulator.faults.clear(cache, topic):
            return _error(404, "faults_not_found", f"no faults for {cache}/{topic}")
        return Response(status_code=204)

    async def create_cache(request: Request) -> Response:
        cache = request.path_params["cache"]
        if not emulator.create_cache(cache):
            return _error(409, "cache_exists", f"cache {cache} already exists")
        return JSONResponse({"cache": cache}, status_code=201)

    async def reset_topic(request: Request) -> Response:
        cache, topic = request.path_params["cache"], request.path_params["topic"]
        try:
            page = emulator.reset_topic(cache, topic)
        except LookupError:
            return _error(404, "cache_not_found", f"no cache {cache}")
        return JSONResponse({"cache": cache, "topic": topic, "sequence_page": page})

    async def generate(request: Request) -> Response:
        cache = request.path_params["cache"]
        try:
            data = await _json_object(request)
            topic = request.path_params.get("topic")
            topics = [topic] if topic is not None else data.get("topics")
            if topic is not None and "topics" in data:
                raise ValueError("topics goes in the body of POST /topics/{cache}/generate only")
            if not isinstance(topics, list):
                raise ValueError(f"topics must be a list of names, got {topics!r}")
            spec = GenerateSpec.from_mapping(data, topics, emulator.max_publish_bytes)
        except ValueError as exc:
            return _error(400, "invalid_generate", str(exc))
        try:  # in a thread: the loop keeps serving webhooks and other admin calls meanwhile
            result = await asyncio.to_thread(emulator.generate, cache, spec)
        except LookupError:
            return _error(404, "cache_not_found", f"no cache {cache}")
        return JSONResponse({"cache": cache, "topics": len(spec.topics), **result.to_dict()})

    hook = "/webhooks/{cache}/{topic}"
    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/stats", stats),
            Route("/webhooks", list_webhooks),
            Route(hook, put_webhook, methods=["PUT"]),
            Route(hook, delete_webhook, methods=["DELETE"]),
            Route(hook + "/secret", get_secret),
            Route(hook + "/rotate-secret", rotate_secret, methods=["POST"]),
            Route("/faults", list_faults),
            Route("/faults", delete_faults, methods=["DELETE"]),
            Route("/faults/{cache}/{topic}", put_faults, methods=["PUT"]),
            Route("/faults/{cache}/{topic}", delete_faults, methods=["DELETE"]),
            Route("/caches/{cache}", create_cache, methods=["POST"]),
            Route("/topics/{cache}/{topic}/reset", reset_topic, methods=["POST"]),
            Route("/topics/{cache}/generate", generate, methods=["POST"]),
            Route("/topics/{cache}/{topic}/generate", generate, methods=["POST"]),
        ]
    )
