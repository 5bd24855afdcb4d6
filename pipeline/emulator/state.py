"""In-memory caches: items with lazily enforced TTLs, and each cache's topics."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.emulator.topics import Mailbox, Published, Topic, TopicRetired

logger = logging.getLogger(__name__)


class CacheNotFound(LookupError):
    """The named cache does not exist (NOT_FOUND on the wire)."""


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
    items: dict[bytes, tuple[bytes, float]] = field(default_factory=dict)
    topics: dict[str, Topic] = field(default_factory=dict)


class Store:
    """Every cache of one emulator; all methods are thread-safe."""

    def __init__(
        self, topic_settings: TopicSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self._caches: dict[str, Cache] = {}
        self._topic_settings = topic_settings
        self._clock = clock

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

    def get(self, cache: str, key: bytes) -> bytes | None:
        """The value of ``key``, or None when absent or expired."""
        with self._lock:
            items = self._cache(cache).items
            found = items.get(key)
            if found is None:
                return None
            value, expires_at = found
            if expires_at <= self._clock():
                del items[key]
                return None
            return value

    def set(self, cache: str, key: bytes, value: bytes, ttl_ms: int) -> None:
        """Store ``value`` under ``key`` for ``ttl_ms`` milliseconds."""
        with self._lock:
            self._cache(cache).items[key] = (value, self._clock() + ttl_ms / 1000.0)

    def delete(self, cache: str, key: bytes) -> None:
        """Remove ``key``; removing a missing key is fine."""
        with self._lock:
            self._cache(cache).items.pop(key, None)

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
                expired = [k for k, (_, exp) in cache.items.items() if exp <= now]
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
