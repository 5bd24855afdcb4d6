"""EmulatorServer: the local Momento-compatible server, in a background thread or a process.

Usage:

    with EmulatorServer(port=0) as emu:        # .start() returns once listening
        CredentialProvider.for_momento_local("127.0.0.1", emu.port)
        secret = emu.register_webhook("chat", "room-1", "http://127.0.0.1:8000/webhooks/momento")
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import grpc
from momento_wire_types import cacheclient_pb2_grpc as cache_grpc
from momento_wire_types import cachepubsub_pb2 as pubsub_pb
from momento_wire_types import cachepubsub_pb2_grpc as pubsub_grpc
from momento_wire_types import controlclient_pb2_grpc as control_grpc

from pipeline.emulator.admin import create_admin_app
from pipeline.emulator.cache import CacheServicer
from pipeline.emulator.cache.calls import ItemLimits
from pipeline.emulator.delivery import Delivery, DeliveryStats, Dispatcher
from pipeline.emulator.faults import FaultRegistry, FaultSpec
from pipeline.emulator.generator import Generated, GenerateSpec, generate
from pipeline.emulator.http_api import create_http_app
from pipeline.emulator.loop import BackgroundLoop
from pipeline.emulator.servicers import ControlServicer, Limits, PubsubServicer
from pipeline.emulator.serving import AppServer
from pipeline.emulator.state import CacheNotFound, Store, TopicSettings
from pipeline.emulator.topics import Published, Topic
from pipeline.emulator.webhooks import Webhook, WebhookRegistry

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 6 * 1024 * 1024  # above the SDK's own 5,243,000-byte cap (MOMENTO.md A)
UNARY_WORKERS = 64


def grpc_options() -> list[tuple[str, int]]:
    """Server options of MOMENTO.md H.8: big messages, permissive keepalive, one owner per port."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 1000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.so_reuseport", 0),
    ]


class EmulatorServer:
    """gRPC (SDK) port, webhook deliveries, fault injection and an optional admin HTTP API.

    ``idle_reset_s``: a topic with no publish or subscribe for this long restarts its numbering
    under a new page (0 disables). ``retain``: items kept per topic for resume. ``fresh_replay``:
    recent items a subscription without a resume point receives first (Momento sends the latest).
    ``subscriber_queue``: items buffered per slow subscriber before it gets a discontinuity.
    ``admin_port``: None disables the admin API, 0 picks a free port. ``http_port``: Momento's
    HTTP API (None disables it, 0 picks a free port); ``api_key``: the only token it accepts
    (None: any non-empty token); ``http_poll_s``: how long a topic long poll waits for an item.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        admin_port: int | None = 0,
        http_port: int | None = None,
        api_key: str | None = None,
        http_poll_s: float = 30.0,
        idle_reset_s: float = 600.0,
        heartbeat_s: float = 4.0,
        retain: int = 1024,
        fresh_replay: int = 1,
        subscriber_queue: int = 4096,
        max_subscriptions: int = 1000,
        max_publish_bytes: int = 4096,
        max_item_bytes: int = 5 * 1024 * 1024,
        webhook_timeout_s: float = 5.0,
        seed: int | None = None,
    ) -> None:
        if port == 443:
            raise ValueError("port 443 makes the Momento SDK use TLS; pick another port")
        if not 0 < heartbeat_s <= 5:
            raise ValueError(f"heartbeat_s must be within (0, 5], got {heartbeat_s}")
        self.host = host
        self._requested_port = port
        self._admin_port = admin_port
        self._http_port = http_port
        self._api_key = api_key
        self._http_poll_s = http_poll_s
        self._limits = Limits(
            max_publish_bytes=max_publish_bytes,
            max_item_bytes=max_item_bytes,
            max_subscriptions=max_subscriptions,
            subscriber_queue=subscriber_queue,
            heartbeat_s=heartbeat_s,
        )
        self.store = Store(TopicSettings(retain, fresh_replay, idle_reset_s))
        self.webhooks = WebhookRegistry()
        self.faults: FaultRegistry[Delivery] = FaultRegistry(seed)
        self._loop = BackgroundLoop()
        self._dispatcher = Dispatcher(
            self._loop, self.webhooks, self.faults, timeout_s=webhook_timeout_s
        )
        self._admin: AppServer | None = None
        self._http: AppServer | None = None
        self._grpc: Any = None
        self._stopping = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="emulator-sweep", daemon=True)
        self.port = 0
        self.admin_url: str | None = None
        self.http_url: str | None = None

    @property
    def address(self) -> str:
        """``host:port`` of the gRPC endpoint (as MOMENTO_LOCAL wants it)."""
        return f"{self.host}:{self.port}"

    def start(self) -> Self:
        """Bind and serve; returns once the gRPC port (and the admin API) accept connections.

        Raises OSError when a port cannot be bound (nothing is left running then).
        """
        try:
            self._start()
        except BaseException:
            self.stop(0)
            raise
        logger.info(
            "emulator listening grpc=%s admin=%s http=%s",
            self.address,
            self.admin_url,
            self.http_url,
        )
        return self

    def _start(self) -> None:
        pubsub = PubsubServicer(self.store, self._limits, self._on_publish)
        workers = self._limits.max_subscriptions + UNARY_WORKERS
        server = grpc.server(ThreadPoolExecutor(workers, "emulator-rpc"), options=grpc_options())
        registrations: list[tuple[Callable[[Any, Any], None], Any]] = [
            (control_grpc.add_ScsControlServicer_to_server, ControlServicer(self.store)),
            (
                cache_grpc.add_ScsServicer_to_server,
                CacheServicer(self.store, ItemLimits(self._limits.max_item_bytes)),
            ),
            (pubsub_grpc.add_PubsubServicer_to_server, pubsub),
        ]
        for register, servicer in registrations:
            register(servicer, server)
        target = f"{self.host}:{self._requested_port}"
        try:
            self.port = server.add_insecure_port(target)
        except RuntimeError as exc:  # grpc reports a failed bind this way
            raise OSError(f"cannot listen on {target}: address in use or not available") from exc
        self._grpc = server
        server.start()
        self._loop.start()
        self._loop.run(self._dispatcher.open())
        if self._admin_port is not None:
            self._admin = AppServer(create_admin_app(self))
            admin_port = self._loop.run(self._admin.start(self.host, self._admin_port))
            self.admin_url = f"http://{self.host}:{admin_port}"
        if self._http_port is not None:
            self._http = AppServer(create_http_app(self, self._api_key, self._http_poll_s))
            http_port = self._loop.run(self._http.start(self.host, self._http_port))
            self.http_url = f"http://{self.host}:{http_port}"
        self._sweeper.start()

    def stop(self, grace_s: float = 0.5) -> None:
        """Stop serving. Close SDK clients first: an ended stream makes sync subscribers spin."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._grpc is not None:
            self._grpc.stop(grace_s).wait(grace_s + 5)
        if self._loop.loop.is_running():
            for app_server in (self._http, self._admin):
                if app_server is not None:
                    self._loop.run(app_server.stop())
            self._loop.run(self._dispatcher.aclose())
        self._loop.stop()
        if self._sweeper.is_alive():
            self._sweeper.join(5)
        logger.info("emulator stopped grpc=%s", self.address)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until ``stop`` is called or ``timeout_s`` passes; True once stopped."""
        return self._stopping.wait(timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def create_cache(self, name: str) -> bool:
        """Create a cache directly (True if new); the SDK's create_cache works as well."""
        return self.store.create_cache(name)

    def register_webhook(self, cache: str, topic: str, url: str, secret: str | None = None) -> str:
        """Send every publish to (cache, topic) to ``url``; returns the signing secret."""
        hook = self.webhooks.register(cache, topic, url, secret)
        logger.info("webhook registered cache=%s topic=%s", cache, topic)
        return hook.secret

    def delete_webhook(self, cache: str, topic: str) -> bool:
        """Remove the webhook of (cache, topic); False if there was none."""
        return self.webhooks.delete(cache, topic)

    def rotate_webhook_secret(self, cache: str, topic: str) -> str:
        """Replace the signing secret at once; returns the new one."""
        return self.webhooks.rotate_secret(cache, topic)

    def list_webhooks(self) -> list[Webhook]:
        """Every registered webhook (with secrets: do not log them)."""
        return self.webhooks.all()

    def set_faults(
        self, cache: str = "*", topic: str = "*", spec: FaultSpec | None = None, **options: Any
    ) -> FaultSpec:
        """Inject faults into topics matching the globs, from ``spec`` or FaultSpec fields."""
        chosen = spec if spec is not None else FaultSpec.from_mapping(options)
        self.faults.set(cache, topic, chosen)
        logger.info("faults set cache=%s topic=%s spec=%s", cache, topic, chosen.to_dict())
        return chosen

    def clear_faults(self) -> None:
        """Remove every fault spec."""
        self.faults.clear(all_patterns=True)

    def reset_topic(self, cache: str, topic: str) -> int:
        """Force a sequence reset now (new page, numbering from 1); returns the new page."""
        return self.store.topic(cache, topic).reset("forced")

    def publish(self, cache: str, topic: str, value: pubsub_pb._TopicValue) -> bool:
        """Publish as a gRPC ``Publish`` does (numbering, fan-out, webhook); False if the topic
        took nothing (its cache was deleted meanwhile). Raises CacheNotFound."""
        found, published = self.store.publish(cache, topic, value)
        if published is None:
            return False
        self._on_publish(found, value, published)
        return True

    def publish_text(self, cache: str, topic: str, text: str) -> bool:
        """``publish`` of a text message."""
        return self.publish(cache, topic, pubsub_pb._TopicValue(text=text))

    def generate(self, cache: str, spec: GenerateSpec) -> Generated:
        """Publish ``spec``'s paced messages into topics of ``cache`` (blocks until done or
        ``stop``). Raises CacheNotFound."""
        if self.store.find_cache(cache) is None:
            raise CacheNotFound(cache)

        def publish(topic: str, text: str) -> bool:
            return self.publish_text(cache, topic, text)

        result = generate(publish, spec, self._stopping)
        logger.info(
            "generated cache=%s topics=%d published=%d seconds=%.1f",
            cache,
            len(spec.topics),
            result.published,
            result.seconds,
        )
        return result

    @property
    def max_publish_bytes(self) -> int:
        """The largest topic message this server accepts."""
        return self._limits.max_publish_bytes

    @property
    def max_item_bytes(self) -> int:
        """The largest cache item (key plus value) this server accepts."""
        return self._limits.max_item_bytes

    @property
    def subscriber_queue(self) -> int:
        """Messages buffered per subscriber (a long poll's largest answer)."""
        return self._limits.subscriber_queue

    def webhook_stats(self, cache: str, topic: str) -> DeliveryStats:
        """Delivery counters of the webhook of (cache, topic)."""
        return self._dispatcher.stats(cache, topic)

    def stats(self) -> dict[str, Any]:
        """A JSON-ready summary for the admin API."""
        return {
            "caches": self.store.list_caches(),
            "subscriptions": self.store.subscriber_count(),
            "webhooks": {
                f"{cache}/{topic}": vars(stats)
                for (cache, topic), stats in self._dispatcher.all_stats().items()
            },
        }

    def _on_publish(self, topic: Topic, value: pubsub_pb._TopicValue, published: Published) -> None:
        if self.webhooks.get(topic.cache, topic.name) is not None:
            text = _as_text(value)
            if text is None:
                logger.warning(
                    "binary message not sent to webhook cache=%s topic=%s", topic.cache, topic.name
                )
            else:
                self._dispatcher.submit(
                    Delivery(
                        topic.cache,
                        topic.name,
                        published.sequence_number,
                        published.event_timestamp_ms,
                        text,
                    )
                )
        plan = self.faults.plan(topic.cache, topic.name)
        if plan is not None and plan.reset_due():
            topic.reset("fault")

    def _sweep(self) -> None:
        while not self._stopping.wait(1.0):
            try:
                self.store.sweep()
            except Exception:
                logger.exception("sweep failed")


def _as_text(value: pubsub_pb._TopicValue) -> str | None:
    """Webhook bodies carry text only; binary is sent when it is valid UTF-8 (Momento: unknown)."""
    if value.WhichOneof("kind") == "text":
        return value.text
    try:
        return value.binary.decode()
    except UnicodeDecodeError:
        return None
