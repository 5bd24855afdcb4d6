"""Order, gaps, resets and duplicates of one topic's deliveries. Pure, no I/O.

Momento numbers a topic's messages 1, 2, 3 …, restarts the numbering after inactivity (or when
the topic is recreated), promises no delivery order, and never retries a webhook: a number that
never arrives is a lost message. `advance` folds a topic's deliveries, in arrival order and in as
many calls as convenient, into a bounded `TopicCursor` and classifies each one; `classify` does a
whole list at once.

Epochs (an epoch is one incarnation of the numbering; the first epoch is not a reset):

- With a page (subscription items) the page names the epoch. The current or previous epoch's page
  goes to that epoch, a retired epoch's page is STALE, any other page starts a new epoch (RESET).
  An epoch whose page is unknown (fed by webhooks) takes the first page the time rule puts in it.
- Without a page (webhooks), with I = `reset_idle_ms`, the first rule that matches decides:
  1. event_ts < previous.last_ts + I: a straggler of the previous epoch, placed there;
  2. seq <= current.highest and event_ts >= current.last_ts + I: RESET, a new epoch starts;
  3. otherwise the current epoch (a lower number without that time jump is late or a duplicate).
  last_ts is the newest event_ts placed in the epoch. Within one numbering a lower number was
  published earlier, so it cannot carry an event time a whole idle period after the epoch's
  newest: the number needs no margin. I must exceed clock skew and not exceed Momento's inactivity
  period (undocumented; the default 1 s errs low). Undetectable: a reset whose first arriving
  number is above the old epoch's highest (a very short old epoch, or the new one's first numbers
  lost) reads as a pause followed by a gap.
- An epoch starts at 1: numbers below its first arrival are a gap. Number 0 (Momento's webhook
  docs say numbering restarts at 0) is counted when it arrives, but its absence is never a gap.
  Numbers above an epoch's highest arrival are unknowable, so a lost tail is never counted.

Gaps. A hole below the highest number opens (GapOpened) at the cursor's clock: the newest
received_ts_ms fed, or `now_ms` if later. It is declared lost (GapDeclaredLost), lowest first,
once the clock reaches noticed + `reorder_window_ms`, or once a number >= last +
`reorder_window_count` arrives (if set), or while more than `max_open_gaps` are open. A declared
number that arrives later is un-declared (GapFilled; the lost count drops) while its range is among
the epoch's last `lost_memory_ranges` lost ranges; after that it reads as a duplicate. A reset
retires the previous epoch: its open gaps are declared lost, its page is remembered.

`now_ms` promises that every delivery received before it has been fed (pass the received_at of
the newest stored event, or the wall clock when caught up). Kept, it makes the result independent
of how deliveries are split into calls. `advance(cursor, [], now_ms, policy)` only declares
expired gaps. When deliveries are stored by parallel workers the promise can fail: a batch
received earlier may still be queued. `horizon_ms`, the receive time of the oldest delivery not
yet fed (None: none known), then holds declarations back: a gap is due only once
min(clock, horizon) reaches noticed + `reorder_window_ms`, so a backlog is not mistaken for loss.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable
from dataclasses import dataclass, fields

from pipeline.sequencing.state import Counters, Epoch, Gap, TopicCursor

__all__ = [
    "Classified",
    "Counters",
    "Delivery",
    "Epoch",
    "Gap",
    "GapDeclaredLost",
    "GapFilled",
    "GapOpened",
    "Kind",
    "Outcome",
    "SequencePolicy",
    "TopicCursor",
    "advance",
    "classify",
]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stored event of a topic: its number, Momento's event_timestamp and our received_at.

    `page` is the subscription item's sequence_page; None (or 0, Momento's "unknown") for webhooks.
    """

    event_id: int | str
    seq: int
    event_ts_ms: int
    received_ts_ms: int
    page: int | None = None

    def __post_init__(self) -> None:
        if self.seq < 0:
            raise ValueError(f"Delivery.seq must be >= 0, got {self.seq}")


@dataclass(frozen=True, slots=True)
class SequencePolicy:
    """Reorder window and reset-inference thresholds; see the module docstring for the rules."""

    reorder_window_ms: int = 2_000  # received time a gap waits before it is declared lost
    reorder_window_count: int | None = None  # ... or until a number this far above it arrives
    reset_idle_ms: int = 1_000  # event-time jump that, with a fall back, marks a reset
    max_open_gaps: int = 10_000  # per epoch; beyond it the lowest gap is declared lost at once
    lost_memory_ranges: int = 256  # per epoch; declared-lost ranges a late arrival can un-declare
    retired_pages_kept: int = 16  # pages of retired epochs, recognised as stale

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value <= 0:
                raise ValueError(f"SequencePolicy.{f.name} must be > 0, got {value}")


class Kind(enum.StrEnum):
    """How a delivery was classified."""

    IN_ORDER = "in_order"  # above every number seen in its epoch
    LATE = "late"  # new, but a higher number of its epoch arrived first
    DUPLICATE = "duplicate"  # its (epoch, seq) was received before
    RESET = "reset"  # the first arrival of a new epoch
    STALE = "stale"  # belongs to a retired epoch (known by its page); not placed


@dataclass(frozen=True, slots=True)
class Classified:
    """A delivery's epoch and kind."""

    event_id: int | str
    epoch: int
    seq: int
    kind: Kind


@dataclass(frozen=True, slots=True)
class GapOpened:
    """Numbers first..last of an epoch are missing; they wait for the reorder window."""

    epoch: int
    first: int
    last: int
    noticed_ms: int


@dataclass(frozen=True, slots=True)
class GapDeclaredLost:
    """Numbers first..last of an epoch did not arrive within the reorder window: lost."""

    epoch: int
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class GapFilled:
    """Number seq of an epoch, declared lost, arrived after all: it is no longer lost."""

    epoch: int
    seq: int


Outcome = Classified | GapOpened | GapDeclaredLost | GapFilled


def advance(
    cursor: TopicCursor,
    deliveries: Iterable[Delivery],
    now_ms: int,
    policy: SequencePolicy,
    horizon_ms: int | None = None,
) -> tuple[TopicCursor, list[Outcome]]:
    """Feed deliveries (in arrival order) to a topic's cursor, then declare gaps expired by now_ms
    (and, if given, by ``horizon_ms``: see the module docstring).

    Returns the new cursor and the outcomes in order: per delivery a Classified, preceded by
    declarations that came due and followed by the gap events it caused.
    """
    run = _Run(cursor, policy, horizon_ms)
    for delivery in deliveries:
        run.feed(delivery)
    run.tick(now_ms)
    return run.freeze(), run.out


def classify(
    deliveries: Iterable[Delivery], policy: SequencePolicy, now_ms: int = 0
) -> tuple[TopicCursor, list[Outcome]]:
    """One-shot `advance` from an empty cursor, for on-demand stats over a whole list."""
    return advance(TopicCursor(), deliveries, now_ms, policy)


class _Open:
    """Mutable working copy of an Epoch during one `advance` call."""

    __slots__ = (
        "highest",
        "last_ts_ms",
        "lost",
        "number",
        "page",
        "pending",
        "start_seq",
        "start_ts_ms",
        "zero_seen",
    )

    def __init__(self, epoch: Epoch) -> None:
        self.number = epoch.number
        self.page = epoch.page
        self.start_seq = epoch.start_seq
        self.start_ts_ms = epoch.start_ts_ms
        self.last_ts_ms = epoch.last_ts_ms
        self.highest = epoch.highest
        self.zero_seen = epoch.zero_seen
        self.pending = list(epoch.pending)
        self.lost = list(epoch.lost)

    def freeze(self) -> Epoch:
        return Epoch(
            number=self.number,
            page=self.page,
            start_seq=self.start_seq,
            start_ts_ms=self.start_ts_ms,
            last_ts_ms=self.last_ts_ms,
            highest=self.highest,
            zero_seen=self.zero_seen,
            pending=tuple(self.pending),
            lost=tuple(self.lost),
        )


def _find_gap(gaps: list[Gap], seq: int) -> int | None:
    """Index of the gap (ascending, disjoint) holding seq, or None."""
    i = bisect.bisect_right(gaps, seq, key=lambda g: g.first) - 1
    return i if i >= 0 and seq <= gaps[i].last else None


def _find_range(ranges: list[tuple[int, int]], seq: int) -> int | None:
    """Index of the inclusive range (ascending, disjoint) holding seq, or None."""
    i = bisect.bisect_right(ranges, seq, key=lambda r: r[0]) - 1
    return i if i >= 0 and seq <= ranges[i][1] else None


class _Run:
    """One `advance` call: the working state, the outcomes so far, and the rules."""

    def __init__(
        self, cursor: TopicCursor, policy: SequencePolicy, horizon_ms: int | None = None
    ) -> None:
        self.policy = policy
        self.horizon_ms = horizon_ms
        self.current = _Open(cursor.current) if cursor.current else None
        self.previous = _Open(cursor.previous) if cursor.previous else None
        self.retired = list(cursor.retired_pages)
        self.clock_ms = cursor.clock_ms
        self.counts = cursor.counters.to_json()
        self.out: list[Outcome] = []
        self._caused: list[Outcome] = []

    def freeze(self) -> TopicCursor:
        return TopicCursor(
            current=self.current.freeze() if self.current else None,
            previous=self.previous.freeze() if self.previous else None,
            retired_pages=tuple(self.retired),
            clock_ms=self.clock_ms,
            counters=Counters(**self.counts),
        )

    def tick(self, now_ms: int) -> None:
        """Move the clock and declare every gap whose window has passed."""
        self.clock_ms = max(self.clock_ms, now_ms)
        for epoch in (self.previous, self.current):
            if epoch is not None:
                self._expire(epoch)

    def feed(self, d: Delivery) -> None:
        self.counts["received"] += 1
        self.tick(d.received_ts_ms)
        page = d.page or None
        target = self._route(d, page)
        if isinstance(target, int):
            self._count(Kind.STALE)
            self.out.append(Classified(d.event_id, target, d.seq, Kind.STALE))
            return
        if target is None:
            target = self._start_epoch(d, page)
            kind = self._place(target, d)
            kind = Kind.RESET if target.number > 1 else kind
        else:
            target.page = target.page or page
            kind = self._place(target, d)
        self._count(kind)
        self.out.append(Classified(d.event_id, target.number, d.seq, kind))
        self.out.extend(self._caused)
        self._caused.clear()
        self._expire(target)

    def _route(self, d: Delivery, page: int | None) -> _Open | int | None:
        """The epoch d belongs to; None for a new epoch; an int (epoch number) if stale."""
        current, previous = self.current, self.previous
        if current is None:
            return None
        if page is not None:
            if current.page == page:
                return current
            if previous is not None and previous.page == page:
                return previous
            for retired_page, number in self.retired:
                if retired_page == page:
                    return number
            if current.page is not None:
                return None
        idle_ms = self.policy.reset_idle_ms
        if previous is not None and d.event_ts_ms < previous.last_ts_ms + idle_ms:
            return previous if page is None or previous.page is None else None
        if d.seq <= current.highest and d.event_ts_ms >= current.last_ts_ms + idle_ms:
            return None
        return current

    def _start_epoch(self, d: Delivery, page: int | None) -> _Open:
        old = self.previous
        if old is not None:
            for gap in old.pending:
                self._declare(old, gap)
            if old.page is not None:
                self.retired.append((old.page, old.number))
                del self.retired[: -self.policy.retired_pages_kept]
        number = self.current.number + 1 if self.current else 1
        fresh = Epoch(number, page, d.seq, d.event_ts_ms, d.event_ts_ms, highest=0)
        self.previous, self.current = self.current, _Open(fresh)
        return self.current

    def _place(self, epoch: _Open, d: Delivery) -> Kind:
        """Record d's number in its epoch and say how it arrived."""
        seq = d.seq
        epoch.last_ts_ms = max(epoch.last_ts_ms, d.event_ts_ms)
        if seq == 0:
            if epoch.zero_seen:
                return Kind.DUPLICATE
            epoch.zero_seen = True
            return Kind.LATE if epoch.highest > 0 else Kind.IN_ORDER
        if seq > epoch.highest:
            if seq > epoch.highest + 1:
                gap = Gap(epoch.highest + 1, seq - 1, self.clock_ms)
                epoch.pending.append(gap)
                self._caused.append(GapOpened(epoch.number, gap.first, gap.last, gap.noticed_ms))
            epoch.highest = seq
            return Kind.IN_ORDER
        i = _find_gap(epoch.pending, seq)
        if i is not None:
            g = epoch.pending[i]
            parts = [Gap(g.first, seq - 1, g.noticed_ms), Gap(seq + 1, g.last, g.noticed_ms)]
            epoch.pending[i : i + 1] = [p for p in parts if p.first <= p.last]
            return Kind.LATE
        i = _find_range(epoch.lost, seq)
        if i is not None:
            first, last = epoch.lost[i]
            parts_lost = [(first, seq - 1), (seq + 1, last)]
            epoch.lost[i : i + 1] = [p for p in parts_lost if p[0] <= p[1]]
            del epoch.lost[: -self.policy.lost_memory_ranges]
            self.counts["lost"] -= 1
            self.counts["recovered"] += 1
            self._caused.append(GapFilled(epoch.number, seq))
            return Kind.LATE
        return Kind.DUPLICATE

    def _expire(self, epoch: _Open) -> None:
        """Declare lost the lowest open gaps while their window has passed."""
        p, pending = self.policy, epoch.pending
        now = self.clock_ms if self.horizon_ms is None else min(self.clock_ms, self.horizon_ms)
        done = 0
        while done < len(pending):
            gap = pending[done]
            due = (
                now >= gap.noticed_ms + p.reorder_window_ms
                or (
                    p.reorder_window_count is not None
                    and epoch.highest >= gap.last + p.reorder_window_count
                )
                or len(pending) - done > p.max_open_gaps
            )
            if not due:
                break
            self._declare(epoch, gap)
            done += 1
        del pending[:done]

    def _declare(self, epoch: _Open, gap: Gap) -> None:
        self.counts["lost"] += gap.size
        epoch.lost.append((gap.first, gap.last))
        del epoch.lost[: -self.policy.lost_memory_ranges]
        self.out.append(GapDeclaredLost(epoch.number, gap.first, gap.last))

    def _count(self, kind: Kind) -> None:
        name = {Kind.DUPLICATE: "duplicates", Kind.RESET: "resets"}.get(kind, kind.value)
        self.counts[name] += 1
