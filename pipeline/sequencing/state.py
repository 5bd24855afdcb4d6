"""A topic's sequencing state (`TopicCursor`) and its lossless JSON form. Pure, no I/O.

The rules that move a cursor live in `pipeline.sequencing.rules`; this module holds the values. A
cursor keeps two epochs at most, and per epoch only what is undecided or recently decided, so its
size does not grow with the topic's history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

CURSOR_FORMAT = 1

JSONDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Gap:
    """Numbers first..last of an epoch, missing since `noticed_ms` (the cursor's clock then)."""

    first: int
    last: int
    noticed_ms: int

    @property
    def size(self) -> int:
        """How many numbers the gap spans."""
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class Epoch:
    """One incarnation of a topic's numbering, as far as it has been seen.

    Every number in 1..`contiguous` was received or declared lost; above it, the numbers up to
    `highest` are received except those in `pending` (open gaps, ascending). `lost` remembers the
    most recent declared-lost ranges so that a late arrival can un-declare its number.
    """

    number: int
    page: int | None
    start_seq: int
    start_ts_ms: int
    last_ts_ms: int
    highest: int
    zero_seen: bool = False
    pending: tuple[Gap, ...] = ()
    lost: tuple[tuple[int, int], ...] = ()

    @property
    def contiguous(self) -> int:
        """Highest number with every number from 1 up to it received or declared lost."""
        return self.pending[0].first - 1 if self.pending else self.highest

    @property
    def received_above(self) -> tuple[tuple[int, int], ...]:
        """Received numbers above `contiguous`, as sorted inclusive ranges."""
        ranges: list[tuple[int, int]] = []
        for gap, following in zip(self.pending, (*self.pending[1:], None), strict=True):
            top = following.first - 1 if following else self.highest
            if gap.last < top:
                ranges.append((gap.last + 1, top))
        return tuple(ranges)

    def to_json(self) -> JSONDict:
        """A JSON-compatible dict that `Epoch.from_json` turns back into an equal epoch."""
        return {
            "number": self.number,
            "page": self.page,
            "start_seq": self.start_seq,
            "start_ts_ms": self.start_ts_ms,
            "last_ts_ms": self.last_ts_ms,
            "highest": self.highest,
            "zero_seen": self.zero_seen,
            "pending": [[g.first, g.last, g.noticed_ms] for g in self.pending],
            "lost": [list(r) for r in self.lost],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Epoch:
        """Rebuild an epoch from `Epoch.to_json` output; raise ValueError if it is malformed."""
        page = data["page"]
        return cls(
            number=_int(data, "number"),
            page=None if page is None else _int(data, "page"),
            start_seq=_int(data, "start_seq"),
            start_ts_ms=_int(data, "start_ts_ms"),
            last_ts_ms=_int(data, "last_ts_ms"),
            highest=_int(data, "highest"),
            zero_seen=bool(data["zero_seen"]),
            pending=tuple(Gap(*_ints(row, 3)) for row in data["pending"]),
            lost=tuple(_pair(row) for row in data["lost"]),
        )


@dataclass(frozen=True, slots=True)
class Counters:
    """Totals over the topic's life. `lost` is net: numbers declared lost minus those recovered."""

    received: int = 0
    in_order: int = 0
    late: int = 0
    duplicates: int = 0
    resets: int = 0
    stale: int = 0
    lost: int = 0
    recovered: int = 0

    def to_json(self) -> dict[str, int]:
        """The counters as a flat dict of ints."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Counters:
        """Rebuild counters; a missing name counts as 0, so counters can be added later."""
        return cls(**{f.name: _int(data, f.name) for f in fields(cls) if f.name in data})


@dataclass(frozen=True, slots=True)
class TopicCursor:
    """Sequencing state of one topic: current and previous epoch, retired pages, clock, counters.

    `retired_pages` holds (page, epoch number) of epochs older than `previous`, newest last, so a
    straggler carrying such a page is recognised as stale instead of starting a new epoch.
    """

    current: Epoch | None = None
    previous: Epoch | None = None
    retired_pages: tuple[tuple[int, int], ...] = ()
    clock_ms: int = 0
    counters: Counters = field(default_factory=Counters)

    def to_json(self) -> JSONDict:
        """A JSON-compatible dict (for a jsonb column) that `from_json` restores exactly."""
        return {
            "format": CURSOR_FORMAT,
            "current": self.current.to_json() if self.current else None,
            "previous": self.previous.to_json() if self.previous else None,
            "retired_pages": [list(p) for p in self.retired_pages],
            "clock_ms": self.clock_ms,
            "counters": self.counters.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TopicCursor:
        """Rebuild a cursor from `to_json` output; raise ValueError if it is malformed."""
        try:
            if data["format"] != CURSOR_FORMAT:
                raise ValueError(f"cursor format must be {CURSOR_FORMAT}, got {data['format']!r}")
            current, previous = data["current"], data["previous"]
            return cls(
                current=Epoch.from_json(current) if current is not None else None,
                previous=Epoch.from_json(previous) if previous is not None else None,
                retired_pages=tuple(_pair(row) for row in data["retired_pages"]),
                clock_ms=_int(data, "clock_ms"),
                counters=Counters.from_json(data["counters"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed topic cursor: {exc!r}") from exc


def _int(data: Mapping[str, Any], key: str) -> int:
    return _check_int(data[key], key)


def _check_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"cursor field {name!r} must be an integer, got {value!r}")
    return value


def _ints(row: Any, count: int) -> tuple[int, ...]:
    if not isinstance(row, list | tuple) or len(row) != count:
        raise ValueError(f"cursor row must be a list of {count} integers, got {row!r}")
    return tuple(_check_int(v, "row item") for v in row)


def _pair(row: Any) -> tuple[int, int]:
    first, second = _ints(row, 2)
    return first, second
