"""Fault injection for webhook deliveries and topics: pure decisions, deterministic under a seed.

A ``FaultSpec`` is attached to a (cache, topic) pattern. Each concrete (cache, topic) gets its own
``FaultPlan`` whose random generator is seeded from (seed, cache, topic), so the same seed and the
same publish order give the same drops, duplicates and shuffles on every run.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from fnmatch import fnmatchcase
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class FaultSpec:
    """What to do to the deliveries of one webhook/topic; the defaults do nothing."""

    drop: float = 0.0
    """Fraction of deliveries never sent (0..1)."""
    delay_ms: float = 0.0
    """Added before each delivery is sent."""
    duplicate: float = 0.0
    """Fraction of deliveries sent twice (0..1)."""
    reorder_window: int = 0
    """Deliveries are held in groups of this size and released shuffled (0 or 1: off)."""
    reset_every: int = 0
    """Force a topic sequence reset (new page, numbering from 1) after every N publishes."""

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value!r}")
        for name in ("delay_ms", "reorder_window", "reset_every"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FaultSpec:
        """Build from JSON/TOML data, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault option(s) {unknown}; known: {sorted(known)}")
        return cls(
            drop=float(data.get("drop", 0.0)),
            delay_ms=float(data.get("delay_ms", 0.0)),
            duplicate=float(data.get("duplicate", 0.0)),
            reorder_window=int(data.get("reorder_window", 0)),
            reset_every=int(data.get("reset_every", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @property
    def active(self) -> bool:
        """Whether this spec changes anything."""
        return self != FaultSpec()


@dataclass(frozen=True)
class Decision:
    """The fate of one delivery: how many copies to send (0 = dropped) and after what delay."""

    copies: int
    delay_s: float


def derive_seed(seed: int, cache: str, topic: str) -> int:
    """A stable per-topic seed (Python's ``hash`` of a str is randomised per process)."""
    digest = hashlib.sha256(f"{seed}\x00{cache}\x00{topic}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


class FaultPlan(Generic[T]):
    """The stateful application of one spec to one (cache, topic); thread-safe."""

    def __init__(self, spec: FaultSpec, seed: int) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._held: list[T] = []
        self._publishes = 0

    def decide(self) -> Decision:
        """Drop, duplicate and delay decisions for the next delivery, in that order."""
        spec = self.spec
        with self._lock:
            if spec.drop and self._rng.random() < spec.drop:
                return Decision(0, 0.0)
            copies = 2 if spec.duplicate and self._rng.random() < spec.duplicate else 1
        return Decision(copies, spec.delay_ms / 1000.0)

    def reorder(self, item: T) -> list[T]:
        """Hold ``item``; when the window is full return the held items shuffled."""
        if self.spec.reorder_window <= 1:
            return [item]
        with self._lock:
            self._held.append(item)
            if len(self._held) < self.spec.reorder_window:
                return []
        return self.drain()

    def drain(self) -> list[T]:
        """Release whatever is held, shuffled (used when the window does not fill in time)."""
        with self._lock:
            released, self._held = self._held, []
            self._rng.shuffle(released)
        return released

    @property
    def holding(self) -> int:
        """How many items wait for the reorder window to fill."""
        return len(self._held)

    def reset_due(self) -> bool:
        """Count one publish; True when this publish should be followed by a sequence reset."""
        if self.spec.reset_every <= 0:
            return False
        with self._lock:
            self._publishes += 1
            return self._publishes % self.spec.reset_every == 0


class FaultRegistry(Generic[T]):
    """Specs by (cache, topic) glob pattern, and one plan per concrete topic; thread-safe."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = secrets.randbits(32) if seed is None else seed
        self._lock = threading.Lock()
        self._specs: dict[tuple[str, str], FaultSpec] = {}
        self._plans: dict[tuple[str, str], FaultPlan[T]] = {}

    def set(self, cache: str, topic: str, spec: FaultSpec) -> None:
        """Apply ``spec`` to topics matching the (cache, topic) globs; replaces an earlier one."""
        with self._lock:
            self._specs[(cache, topic)] = spec
            self._plans.clear()

    def clear(self, cache: str = "*", topic: str = "*", *, all_patterns: bool = False) -> bool:
        """Remove one pattern's spec (or all of them); True if something was removed."""
        with self._lock:
            removed = bool(self._specs) if all_patterns else (cache, topic) in self._specs
            if all_patterns:
                self._specs.clear()
            else:
                self._specs.pop((cache, topic), None)
            self._plans.clear()
            return removed

    def specs(self) -> list[tuple[str, str, FaultSpec]]:
        """Every (cache pattern, topic pattern, spec)."""
        with self._lock:
            return [(c, t, s) for (c, t), s in self._specs.items()]

    def plan(self, cache: str, topic: str) -> FaultPlan[T] | None:
        """The plan for a concrete topic, or None when no active spec matches it."""
        with self._lock:
            key = (cache, topic)
            found = self._plans.get(key)
            if found is not None:
                return found
            spec = self._match(cache, topic)
            if spec is None or not spec.active:
                return None
            plan: FaultPlan[T] = FaultPlan(spec, derive_seed(self.seed, cache, topic))
            self._plans[key] = plan
            return plan

    def _match(self, cache: str, topic: str) -> FaultSpec | None:
        exact = self._specs.get((cache, topic))
        if exact is not None:
            return exact
        for (cache_glob, topic_glob), spec in self._specs.items():
            if fnmatchcase(cache, cache_glob) and fnmatchcase(topic, topic_glob):
                return spec
        return None
