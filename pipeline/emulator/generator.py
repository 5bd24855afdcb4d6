"""Traffic made inside the server: paced publishes for benchmarks (admin ``.../generate``).

One Python process publishing through the SDK tops out near 1,000-1,900 messages/s on a small
machine, below what a subscription benchmark needs. The server can publish to itself for the
cost of numbering and fan-out alone, through the same code path as a gRPC ``Publish``, so
subscribers and webhooks get the messages with their sequence numbers as usual.

Each message is compact JSON, ``{"i":<index>,"t":<epoch ms>,"pad":"…"}`` padded to ``size``
bytes: ``i`` counts from 0 across the whole call (topics take turns: message ``i`` goes to
``topics[i % len(topics)]``) and ``t`` is the wall-clock time just before its publish, so a
consumer can measure publish-to-anywhere latency on the server's clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_COUNT = 1_000_000
MAX_RATE_PER_S = 100_000.0
MAX_DURATION_S = 600.0
OVERRUN_S = 60.0
"""A call that falls this far behind its schedule (an overloaded server) stops early."""
TICK_S = 0.001

Publish = Callable[[str, str], bool]
"""Publish text to a topic of the generating cache; False when the topic took nothing."""


@dataclass(frozen=True)
class GenerateSpec:
    """What to publish: ``count`` messages of ``size`` bytes at ``rate_per_s``, round-robin."""

    topics: tuple[str, ...]
    count: int
    rate_per_s: float
    size: int = 64

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], topics: Sequence[str], max_bytes: int
    ) -> GenerateSpec:
        """Validate an admin request body; raise ValueError naming the bad value."""
        unknown = set(data) - {"count", "rate_per_s", "size", "topics"}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        count, rate, size = data.get("count"), data.get("rate_per_s"), data.get("size", 64)
        if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= MAX_COUNT:
            raise ValueError(f"count must be an integer in 1..{MAX_COUNT}, got {count!r}")
        if not isinstance(rate, int | float) or isinstance(rate, bool):
            raise ValueError(f"rate_per_s must be a number, got {rate!r}")
        if not 0 < rate <= MAX_RATE_PER_S:
            raise ValueError(f"rate_per_s must be in (0, {MAX_RATE_PER_S:g}], got {rate!r}")
        if count / rate > MAX_DURATION_S:
            raise ValueError(
                f"count / rate_per_s must be at most {MAX_DURATION_S:g} s, got {count / rate:g}"
            )
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= max_bytes:
            raise ValueError(f"size must be an integer in 1..{max_bytes}, got {size!r}")
        if not topics or not all(isinstance(t, str) and t and "/" not in t for t in topics):
            raise ValueError(f"topics must be non-empty names without '/', got {topics!r}")
        return cls(tuple(topics), count, float(rate), size)


@dataclass(frozen=True)
class Generated:
    """What a call did: messages published, and how long it took."""

    published: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the rate achieved."""
        rate = self.published / self.seconds if self.seconds > 0 else 0.0
        return {"published": self.published, "seconds": self.seconds, "rate_per_s": rate}


def payload(index: int, size: int, now_ms: float) -> str:
    """Message ``index``: JSON with its publish time, padded up to ``size`` bytes if it fits."""
    head = f'{{"i":{index},"t":{now_ms:.3f}'
    room = size - len(head) - len(',"pad":""}')
    return head + (f',"pad":"{"x" * room}"}}' if room > 0 else "}")


def generate(publish: Publish, spec: GenerateSpec, stop: threading.Event) -> Generated:
    """Publish ``spec`` on schedule (open loop: a late message is sent at once, never skipped);
    returns early if ``stop`` is set or the schedule overruns by ``OVERRUN_S``."""
    topics, rate, count = spec.topics, spec.rate_per_s, spec.count
    start = time.monotonic()
    give_up = start + count / rate + OVERRUN_S
    sent = 0
    while sent < count and not stop.is_set():
        now = time.monotonic()
        if now > give_up:
            break
        due = min(count, int((now - start) * rate) + 1)
        while sent < due:
            publish(topics[sent % len(topics)], payload(sent, spec.size, time.time() * 1000))
            sent += 1
        if sent < count:
            wait_s = start + sent / rate - time.monotonic()
            if wait_s > 0:
                stop.wait(max(wait_s, TICK_S))
    return Generated(sent, time.monotonic() - start)
