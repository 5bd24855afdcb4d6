"""Topic state: sequence numbers, pages, the replay window and per-subscriber mailboxes.

Everything here is thread-safe and free of gRPC: the servicer turns mailbox entries into a stream.
A topic's lock covers numbering, the replay buffer and the fan-out, so every subscriber sees the
same number for the same message and a resume snapshot never races a publish.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from momento_wire_types import cachepubsub_pb2 as pb

logger = logging.getLogger(__name__)

Entry = pb._SubscriptionItem
HEARTBEAT = pb._SubscriptionItem(heartbeat=pb._Heartbeat())


def new_page(previous: int = 0) -> int:
    """A fresh non-zero sequence page, different from ``previous``."""
    while True:
        page = secrets.randbits(63)
        if page not in (0, previous):
            return page


def discontinuity(last: int, new: int, page: int) -> Entry:
    """A discontinuity entry: the next item is ``new`` on ``page``, not ``last + 1``."""
    return pb._SubscriptionItem(
        discontinuity=pb._Discontinuity(
            last_topic_sequence=last, new_topic_sequence=new, new_sequence_page=page
        )
    )


class TopicRetired(Exception):
    """The topic was forgotten while idle; look it up again to get its new incarnation."""


@dataclass(frozen=True)
class Published:
    """What a publish was assigned: its number, page and server receive time (epoch ms)."""

    sequence_number: int
    sequence_page: int
    event_timestamp_ms: int


class Mailbox:
    """A bounded queue of stream entries for one subscriber.

    ``offer`` never blocks the publisher: when the queue is full the item is dropped and the next
    item that fits is preceded by a discontinuity naming the last number this subscriber got.
    """

    def __init__(self, capacity: int, initial: list[Entry], last_sequence: int) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._entries: deque[Entry] = deque(initial)
        self._capacity = capacity
        self._last = last_sequence
        self._dropping = False
        self._closed = False
        self._listener: Callable[[], None] | None = None
        self.overflows = 0

    def set_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (from the publishing thread) whenever entries arrive or the mailbox
        closes; at once if some are already waiting. Lets an event loop wait without a thread."""
        with self._cond:
            self._listener = listener
            ready = bool(self._entries) or self._closed
        if ready:
            listener()

    def offer(self, entry: Entry, sequence_number: int, page: int) -> None:
        """Queue an item entry, or drop it and remember the gap if the subscriber is behind."""
        with self._cond:
            if self._closed:
                return
            if len(self._entries) >= self._capacity:
                if not self._dropping:
                    self.overflows += 1
                self._dropping = True
                return
            if self._dropping:
                self._entries.append(discontinuity(self._last, sequence_number, page))
                self._dropping = False
            self._entries.append(entry)
            self._last = sequence_number
            self._cond.notify()
            listener = self._listener
        if listener is not None:
            listener()

    def push(self, entry: Entry, last_sequence: int) -> None:
        """Queue a control entry (a discontinuity) regardless of capacity."""
        with self._cond:
            self._entries.append(entry)
            self._last = last_sequence
            self._dropping = False
            self._cond.notify()
            listener = self._listener
        if listener is not None:
            listener()

    def take(self, timeout_s: float) -> list[Entry] | None:
        """All queued entries; ``[]`` after ``timeout_s`` idle; ``None`` once closed."""
        with self._cond:
            if not self._entries and not self._closed:
                self._cond.wait(timeout_s)
            if self._closed:
                return None
            batch = list(self._entries)
            self._entries.clear()
            return batch

    def take_now(self) -> list[Entry]:
        """All queued entries, without waiting."""
        with self._cond:
            batch = list(self._entries)
            self._entries.clear()
            return batch

    def close(self) -> None:
        """Wake the stream and make it finish (the RPC is already over or the server stops)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            listener = self._listener
        if listener is not None:
            listener()


class Topic:
    """One incarnation-aware topic: numbering from 1 per page, a replay window, live subscribers."""

    def __init__(
        self,
        cache: str,
        name: str,
        *,
        retain: int,
        fresh_replay: int,
        idle_reset_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.name = name
        self._lock = threading.Lock()
        self._retain = retain
        self._fresh_replay = fresh_replay
        self._idle_reset_s = idle_reset_s
        self._clock = clock
        self.page = new_page()
        self.last_sequence = 0
        self._buffer: deque[tuple[int, Entry]] = deque(maxlen=max(retain, 1))
        self._subscribers: set[Mailbox] = set()
        self._last_active = clock()
        self.closed = False
        self._retired = False

    @property
    def subscriber_count(self) -> int:
        """How many streams are attached."""
        return len(self._subscribers)

    def idle_for(self, now: float) -> float:
        """Seconds since the last publish or attach."""
        return now - self._last_active

    def publish(self, value: pb._TopicValue) -> Published | None:
        """Number, retain and fan out a message; ``None`` if the topic is closed."""
        with self._lock:
            if self._retired:
                raise TopicRetired(self.name)
            if self.closed:
                return None
            now = self._clock()
            self._maybe_idle_reset(now)
            self._last_active = now
            self.last_sequence += 1
            seq, page = self.last_sequence, self.page
            entry = pb._SubscriptionItem(
                item=pb._TopicItem(topic_sequence_number=seq, value=value, sequence_page=page)
            )
            if self._retain:
                self._buffer.append((seq, entry))
            for mailbox in self._subscribers:
                mailbox.offer(entry, seq, page)
        return Published(seq, page, time.time_ns() // 1_000_000)

    def attach(self, resume_at: int, resume_page: int, capacity: int) -> Mailbox:
        """Register a subscriber and queue its replay in one atomic step (MOMENTO.md C.4)."""
        with self._lock:
            if self._retired:
                raise TopicRetired(self.name)
            now = self._clock()
            self._maybe_idle_reset(now)
            self._last_active = now
            initial = self._replay(resume_at, resume_page)
            mailbox = Mailbox(capacity, initial, self.last_sequence)
            if not self.closed:
                self._subscribers.add(mailbox)
            return mailbox

    def detach(self, mailbox: Mailbox) -> None:
        """Forget a subscriber whose stream ended."""
        with self._lock:
            self._subscribers.discard(mailbox)
            self._last_active = self._clock()

    def try_retire(self, now: float, idle_s: float) -> bool:
        """Retire the topic if nobody is attached and it was idle for ``idle_s``."""
        with self._lock:
            if self._subscribers or now - self._last_active < idle_s:
                return False
            self._retired = True
            return True

    def reset(self, reason: str) -> int:
        """Restart numbering under a new page; attached subscribers get a discontinuity."""
        with self._lock:
            return self._reset(reason)

    def close(self) -> None:
        """Stop numbering and delivering (cache deleted); attached streams only get heartbeats."""
        with self._lock:
            self.closed = True
            self._subscribers.clear()
            self._buffer.clear()

    def _maybe_idle_reset(self, now: float) -> None:
        idle_s = self._idle_reset_s
        if self.last_sequence and idle_s > 0 and now - self._last_active >= idle_s:
            self._reset("idle")

    def _reset(self, reason: str) -> int:
        old_last, old_page = self.last_sequence, self.page
        self.page = new_page(old_page)
        self.last_sequence = 0
        self._buffer.clear()
        for mailbox in self._subscribers:
            mailbox.push(discontinuity(old_last, 1, self.page), 0)
        logger.info(
            "topic reset cache=%s topic=%s reason=%s last=%d",
            self.cache,
            self.name,
            reason,
            old_last,
        )
        return self.page

    def _replay(self, resume_at: int, resume_page: int) -> list[Entry]:
        items = list(self._buffer)
        next_seq = self.last_sequence + 1
        oldest = items[0][0] if items else next_seq
        if resume_at == 0:
            if self._fresh_replay <= 0:
                return []
            return [entry for _, entry in items[-self._fresh_replay :]]
        stale_page = resume_page not in (0, self.page)
        if stale_page or resume_at > next_seq:
            # The numbering the client knew is gone: say so, then give the current page's items.
            return [discontinuity(resume_at - 1, oldest, self.page)] + [e for _, e in items]
        if resume_at < oldest:
            return [discontinuity(resume_at - 1, oldest, self.page)] + [e for _, e in items]
        return [entry for seq, entry in items if seq >= resume_at]
