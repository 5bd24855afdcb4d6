"""In-memory caches: typed items with lazily enforced TTLs, and each cache's topics.

An item's value is bytes (a scalar) or one of the collection types (list, dictionary, set,
sorted set). The cache-call modules work on a ``Keyspace``: one cache's items, held under the
store's lock for the length of one call, so each call is atomic as on Momento.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pipeline.emulator.topics import Mailbox, Published, Topic, TopicRetired

logger = logging.getLogger(__name__)


class CacheNotFound(LookupError):
    """The named cache does not exist (NOT_FOUND on the wire)."""


class SortedSet(dict[bytes, float]):
    """A sorted set: element to score; order is computed when read."""


Value = bytes | list[bytes] | dict[bytes, bytes] | set[bytes] | SortedSet

KIND_NAMES: dict[type, str] = {
    bytes: "scalar",
    list: "list",
    dict: "dictionary",
    set: "set",
    SortedSet: "sorted set",
}


def kind_of(value: Value) -> str:
    """The Momento name of a value's type."""
    return KIND_NAMES[type(value)]


class WrongType(TypeError):
    """The key holds another type of item than the call works on (FAILED_PRECONDITION)."""

    def __init__(self, key: bytes, kind: str, wanted: str) -> None:
        super().__init__(f"key {key!r} holds a {kind}, not a {wanted}")
        self.kind = kind
        self.wanted = wanted


@dataclass
class Item:
    """One stored value and its expiry on the monotonic clock."""

    value: Value
    expires_at: float


class Keyspace:
    """One cache's items during one call (the store's lock is held); expiry is lazy."""

    def __init__(self, items: dict[bytes, Item], now: float) -> None:
        self._items = items
        self.now = now

    def find(self, key: bytes) -> Item | None:
        """The live item under ``key``, dropping it if it expired."""
        item = self._items.get(key)
        if item is not None and item.expires_at <= self.now:
            del self._items[key]
            return None
        return item

    def scalar(self, key: bytes) -> bytes | None:
        """The scalar value under ``key``; WrongType if a collection lives there."""
        item = self.find(key)
        if item is None:
            return None
        if not isinstance(item.value, bytes):
            raise WrongType(key, kind_of(item.value), "scalar")
        return item.value

    def collection(self, key: bytes, kind: type[Value]) -> Item | None:
        """The item under ``key`` if it holds a ``kind``; WrongType if it holds another type."""
        item = self.find(key)
        if item is not None and type(item.value) is not kind:
            raise WrongType(key, kind_of(item.value), KIND_NAMES[kind])
        return item

    def write_collection(
        self, key: bytes, kind: type[Value], ttl_ms: int, refresh_ttl: bool
    ) -> Item:
        """The ``kind`` item under ``key`` for writing, created empty if absent. Momento's
        CollectionTtl: a new collection lives ``ttl_ms``; an existing one gets ``ttl_ms`` from
        now only when ``refresh_ttl`` is set."""
        item = self.collection(key, kind)
        expires_at = self.now + ttl_ms / 1000.0
        if item is None:
            item = Item(kind(), expires_at)
            self._items[key] = item
        elif refresh_ttl:
            item.expires_at = expires_at
        return item

    def refresh(self, key: bytes, ttl_ms: int) -> None:
        """Give the item under ``key`` ``ttl_ms`` from now."""
        item = self._items.get(key)
        if item is not None:
            item.expires_at = self.now + ttl_ms / 1000.0

    def drop_if_empty(self, key: bytes) -> None:
        """Remove a collection left empty (Momento forgets empty collections)."""
        item = self._items.get(key)
        if item is not None and not isinstance(item.value, bytes) and not item.value:
            del self._items[key]

    def put(self, key: bytes, value: Value, ttl_ms: int) -> None:
        """Store ``value`` under ``key`` for ``ttl_ms``, whatever was there."""
        self._items[key] = Item(value, self.now + ttl_ms / 1000.0)

    def delete(self, key: bytes) -> None:
        """Remove ``key``; removing a missing key is fine."""
        self._items.pop(key, None)


@dataclass(frozen=True)
class TopicSettings:
    """How new topics behave; see EmulatorServer for the meaning of each knob."""

    retain: int = 1024
    fresh_replay: int = 1
    idle_reset_s: float = 600.0


@dataclass
class Cache:
    """One cache: its key/value items (value, expiry on the monotonic clock) and topics."""

    name: str
    items: dict[bytes, Item] = field(default_factory=dict)
    topics: dict[str, Topic] = field(default_factory=dict)


class SigningKeys:
    """Signing keys the control plane hands out: kept and listed until they expire or are
    revoked. Nothing on this server checks URLs signed with them."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._expiry_s: dict[str, int] = {}
        self._clock = clock

    def create(self, ttl_minutes: int) -> tuple[str, int]:
        """A new key (a JSON Web Key) and its expiry in epoch seconds."""
        key_id = uuid.uuid4().hex
        expires_at = int(self._clock()) + ttl_minutes * 60
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        key = json.dumps({"kty": "oct", "alg": "HS256", "kid": key_id, "k": secret})
        with self._lock:
            self._expiry_s[key_id] = expires_at
        return key, expires_at

    def revoke(self, key_id: str) -> None:
        """Forget a key; revoking an unknown key is fine."""
        with self._lock:
            self._expiry_s.pop(key_id, None)

    def list(self) -> list[tuple[str, int]]:
        """(key id, expiry) of every live key."""
        now = self._clock()
        with self._lock:
            return [(kid, exp) for kid, exp in self._expiry_s.items() if exp > now]


class Store:
    """Every cache of one emulator; all methods are thread-safe."""

    def __init__(
        self, topic_settings: TopicSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self._caches: dict[str, Cache] = {}
        self._topic_settings = topic_settings
        self._clock = clock
        self.signing_keys = SigningKeys()

    def create_cache(self, name: str) -> bool:
        """Create a cache; False if it already exists."""
        with self._lock:
            if name in self._caches:
                return False
            self._caches[name] = Cache(name)
        logger.info("cache created cache=%s", name)
        return True

    def delete_cache(self, name: str) -> None:
        """Delete a cache; its topics stop delivering but attached streams stay open."""
        with self._lock:
            cache = self._caches.pop(name, None)
        if cache is None:
            raise CacheNotFound(name)
        for topic in cache.topics.values():
            topic.close()
        logger.info("cache deleted cache=%s", name)

    def flush_cache(self, name: str) -> None:
        """Remove every item of a cache."""
        with self._lock:
            self._cache(name).items.clear()

    def find_cache(self, name: str) -> Cache | None:
        """The cache if it exists."""
        with self._lock:
            return self._caches.get(name)

    def list_caches(self) -> list[str]:
        """Names of all caches, sorted."""
        with self._lock:
            return sorted(self._caches)

    @contextmanager
    def keyspace(self, cache: str) -> Iterator[Keyspace]:
        """The items of ``cache`` under the store's lock, for one atomic call."""
        with self._lock:
            yield Keyspace(self._cache(cache).items, self._clock())

    def get(self, cache: str, key: bytes) -> bytes | None:
        """The scalar value of ``key``, or None when absent or expired."""
        with self.keyspace(cache) as items:
            return items.scalar(key)

    def set(self, cache: str, key: bytes, value: bytes, ttl_ms: int) -> None:
        """Store ``value`` under ``key`` for ``ttl_ms`` milliseconds."""
        with self.keyspace(cache) as items:
            items.put(key, value, ttl_ms)

    def delete(self, cache: str, key: bytes) -> None:
        """Remove ``key``; removing a missing key is fine."""
        with self.keyspace(cache) as items:
            items.delete(key)

    def topic(self, cache: str, name: str) -> Topic:
        """The topic ``name`` of ``cache``, created on first use."""
        with self._lock:
            topics = self._cache(cache).topics
            topic = topics.get(name)
            if topic is None:
                settings = self._topic_settings
                topic = Topic(
                    cache,
                    name,
                    retain=settings.retain,
                    fresh_replay=settings.fresh_replay,
                    idle_reset_s=settings.idle_reset_s,
                    clock=self._clock,
                )
                topics[name] = topic
            return topic

    def publish(self, cache: str, name: str, value: Any) -> tuple[Topic, Published | None]:
        """Publish to the current incarnation of a topic (see ``sweep``)."""
        while True:
            topic = self.topic(cache, name)
            try:
                return topic, topic.publish(value)
            except TopicRetired:
                continue  # swept between lookup and use: the next lookup makes a new one

    def attach(
        self, cache: str, name: str, resume_at: int, resume_page: int, capacity: int
    ) -> tuple[Topic, Mailbox]:
        """Attach a subscriber to the current incarnation of a topic."""
        while True:
            topic = self.topic(cache, name)
            try:
                return topic, topic.attach(resume_at, resume_page, capacity)
            except TopicRetired:
                continue

    def find_topic(self, cache: str, name: str) -> Topic | None:
        """The topic if it exists now, without creating it."""
        with self._lock:
            found = self._caches.get(cache)
            return None if found is None else found.topics.get(name)

    def subscriber_count(self) -> int:
        """Streams attached across all topics."""
        with self._lock:
            return sum(t.subscriber_count for c in self._caches.values() for t in c.topics.values())

    def sweep(self) -> None:
        """Drop expired items and forget idle topics without subscribers (bounded memory)."""
        now = self._clock()
        idle_s = self._topic_settings.idle_reset_s
        with self._lock:
            for cache in self._caches.values():
                expired = [k for k, item in cache.items.items() if item.expires_at <= now]
                for key in expired:
                    del cache.items[key]
                if idle_s <= 0:
                    continue
                for name, topic in list(cache.topics.items()):
                    if topic.try_retire(now, idle_s):
                        del cache.topics[name]

    def _cache(self, name: str) -> Cache:
        cache = self._caches.get(name)
        if cache is None:
            raise CacheNotFound(name)
        return cache
