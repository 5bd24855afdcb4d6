"""gRPC servicers on the momento_wire_types bases: control and pub/sub (the cache data plane is
the ``cache`` package).

Status codes follow MOMENTO.md section D so the official SDK maps them as the real service's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from momento_wire_types import cachepubsub_pb2 as pubsub_pb
from momento_wire_types import cachepubsub_pb2_grpc as pubsub_grpc
from momento_wire_types import common_pb2
from momento_wire_types import controlclient_pb2 as control_pb
from momento_wire_types import controlclient_pb2_grpc as control_grpc

from pipeline.emulator.cache.calls import unimplemented
from pipeline.emulator.state import CacheNotFound, Store
from pipeline.emulator.topics import HEARTBEAT, Mailbox, Published, Topic

logger = logging.getLogger(__name__)

Context = Any  # grpc.ServicerContext; grpc ships no type information
PublishHook = Callable[[Topic, pubsub_pb._TopicValue, Published], None]


@dataclass(frozen=True)
class Limits:
    """Server-side limits; the error trailers are the ones the SDK turns into messages."""

    max_publish_bytes: int = 4096
    max_item_bytes: int = 5 * 1024 * 1024
    max_subscriptions: int = 1000
    subscriber_queue: int = 4096
    heartbeat_s: float = 4.0


def _abort(context: Context, code: grpc.StatusCode, details: str, err: str = "") -> NoReturn:
    if err:
        context.set_trailing_metadata((("err", err),))
    context.abort(code, details)
    raise AssertionError("unreachable: context.abort raises")


def _not_found(context: Context, cache: str) -> NoReturn:
    _abort(context, grpc.StatusCode.NOT_FOUND, f"cache not found: {cache}")


def _require_name(context: Context, what: str, value: str) -> None:
    if not value:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{what} must not be empty")


class ControlServicer(control_grpc.ScsControlServicer):
    """Caches (create, list, delete, flush) and signing keys; names are in the request body."""

    CreateIndex = unimplemented("CreateIndex")
    DeleteIndex = unimplemented("DeleteIndex")
    ListIndexes = unimplemented("ListIndexes")

    def __init__(self, store: Store) -> None:
        self._store = store

    def CreateCache(self, request: Any, context: Context) -> control_pb._CreateCacheResponse:
        _require_name(context, "cache_name", request.cache_name)
        if not self._store.create_cache(request.cache_name):
            _abort(context, grpc.StatusCode.ALREADY_EXISTS, f"cache exists: {request.cache_name}")
        return control_pb._CreateCacheResponse()

    def DeleteCache(self, request: Any, context: Context) -> control_pb._DeleteCacheResponse:
        try:
            self._store.delete_cache(request.cache_name)
        except CacheNotFound:
            _not_found(context, request.cache_name)
        return control_pb._DeleteCacheResponse()

    def ListCaches(self, request: Any, context: Context) -> control_pb._ListCachesResponse:
        caches = [control_pb._Cache(cache_name=name) for name in self._store.list_caches()]
        return control_pb._ListCachesResponse(cache=caches)

    def CreateSigningKey(
        self, request: Any, context: Context
    ) -> control_pb._CreateSigningKeyResponse:
        if request.ttl_minutes <= 0:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "ttl_minutes must be > 0")
        key, expires_at = self._store.signing_keys.create(request.ttl_minutes)
        return control_pb._CreateSigningKeyResponse(key=key, expires_at=expires_at)

    def ListSigningKeys(
        self, request: Any, context: Context
    ) -> control_pb._ListSigningKeysResponse:
        keys = [
            control_pb._SigningKey(key_id=key_id, expires_at=expires_at)
            for key_id, expires_at in self._store.signing_keys.list()
        ]
        return control_pb._ListSigningKeysResponse(signing_key=keys)

    def RevokeSigningKey(
        self, request: Any, context: Context
    ) -> control_pb._RevokeSigningKeyResponse:
        self._store.signing_keys.revoke(request.key_id)
        return control_pb._RevokeSigningKeyResponse()

    def FlushCache(self, request: Any, context: Context) -> control_pb._FlushCacheResponse:
        try:
            self._store.flush_cache(request.cache_name)
        except CacheNotFound:
            _not_found(context, request.cache_name)
        return control_pb._FlushCacheResponse()


class PubsubServicer(pubsub_grpc.PubsubServicer):
    """Publish and Subscribe; subscription streams never end from this side (MOMENTO.md C.7)."""

    def __init__(self, store: Store, limits: Limits, on_publish: PublishHook) -> None:
        self._store = store
        self._limits = limits
        self._on_publish = on_publish
        self._lock = threading.Lock()
        self._streams = 0

    def Publish(self, request: Any, context: Context) -> common_pb2._Empty:
        _require_name(context, "cache_name", request.cache_name)
        _require_name(context, "topic", request.topic)
        kind = request.value.WhichOneof("kind")
        if kind is None:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "value must be text or binary")
        size = len(request.value.binary) if kind == "binary" else len(request.value.text.encode())
        if size > self._limits.max_publish_bytes:
            _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"message of {size} bytes exceeds {self._limits.max_publish_bytes}",
                "request_size_limit_exceeded",
            )
        try:
            topic, published = self._store.publish(request.cache_name, request.topic, request.value)
        except CacheNotFound:
            _not_found(context, request.cache_name)
        if published is not None:
            self._on_publish(topic, request.value, published)
        return common_pb2._Empty()

    def Subscribe(self, request: Any, context: Context) -> Iterator[pubsub_pb._SubscriptionItem]:
        _require_name(context, "cache_name", request.cache_name)
        _require_name(context, "topic", request.topic)
        if self._store.find_cache(request.cache_name) is None:
            _not_found(context, request.cache_name)
        with self._lock:
            if self._streams >= self._limits.max_subscriptions:
                full = True
            else:
                full = False
                self._streams += 1
        if full:
            _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"at most {self._limits.max_subscriptions} subscriptions",
                "topic_subscriptions_limit_exceeded",
            )
        try:
            topic, mailbox = self._store.attach(
                request.cache_name,
                request.topic,
                request.resume_at_topic_sequence_number,
                request.sequence_page,
                self._limits.subscriber_queue,
            )
        except CacheNotFound:
            self._release()
            _not_found(context, request.cache_name)
        attachment = _Attachment(topic, mailbox, self._release)
        if not context.add_callback(attachment.close):
            attachment.close()
        return self._stream(attachment)

    def _release(self) -> None:
        with self._lock:
            self._streams -= 1

    def _stream(self, attachment: _Attachment) -> Iterator[pubsub_pb._SubscriptionItem]:
        topic, mailbox = attachment.topic, attachment.mailbox
        logger.debug("subscribed cache=%s topic=%s", topic.cache, topic.name)
        try:
            yield HEARTBEAT
            while True:
                batch = mailbox.take(self._limits.heartbeat_s)
                if batch is None:
                    return
                if not batch:
                    yield HEARTBEAT
                    continue
                yield from batch
        finally:
            attachment.close()
            logger.debug("unsubscribed cache=%s topic=%s", topic.cache, topic.name)


class _Attachment:
    """A subscriber's hold on a topic, released exactly once (RPC end or generator exit)."""

    def __init__(self, topic: Topic, mailbox: Mailbox, release: Callable[[], None]) -> None:
        self.topic = topic
        self.mailbox = mailbox
        self._release = release
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.mailbox.close()
        self.topic.detach(self.mailbox)
        self._release()
