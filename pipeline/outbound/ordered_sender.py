"""Sends an ordered topic's committed outbox rows on a background thread, in order.

The ordered driver is a serial stage: each event's workflow and commit wait for the previous
one's. Sending a result to Momento is a network round trip that the next event does not need
to wait for, so the driver hands its committed rows to this sender and goes on; one thread per
process sends them strictly in the order given. The driver still holds the topic's lock while
rows are in flight (it waits for the sender before letting go), so a key's rows are only ever
sent by one sender at a time.

A row is marked sent by a later statement of the driver (its next commit or peek, or before it
lets the lock go). A crash loses those marks: the rows of the last two events at most are sent
again, carrying the same message ids.

A send that fails stops the sender: the rows queued after it are not sent (that would break the
order) and the driver, once it has waited for the sender, sends them itself the synchronous
way, which records retries with backoff and dead-letters what cannot be sent.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class Sends(Protocol):
    """What the sender calls for each row: one Momento operation, raising if it failed."""

    def send_now(self, row: Any) -> None: ...


class OrderedSender:
    """A queue of rows sent one at a time, in order, by one thread."""

    def __init__(self, publisher: Sends) -> None:
        self._publisher = publisher
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ordered-send")
        self._queued: deque[Future[int | None]] = deque()
        self._known: set[int] = set()
        self._failed = threading.Event()

    @property
    def failed(self) -> bool:
        """A send failed since ``begin``: the rows after it were not sent."""
        return self._failed.is_set()

    def begin(self) -> None:
        """Start a driver's turn (the previous one has waited for its sends)."""
        assert not self._queued, "a previous turn did not wait for its sends"
        self._known.clear()
        self._failed.clear()

    def submit(self, rows: Sequence[Any]) -> int:
        """Queue a key's pending rows, oldest first, that are not queued yet; returns how many.

        Waits first for the sends queued before (the previous event's): one event's rows are
        sent while the next event runs, no more, so a slow or rate-limited Momento slows the
        driver instead of piling rows up behind the topic's lock. Stops at a row not due (a
        retry backoff holds it, and the rows behind it wait for it), and queues nothing once a
        send has failed.
        """
        self._finish_queued()
        queued = 0
        for row in rows:
            if row.id in self._known:
                continue
            if not row.due or self.failed:
                break
            self._known.add(row.id)
            self._queued.append(self._executor.submit(self._send, row))
            queued += 1
        return queued

    def sent(self) -> list[int]:
        """Ids of rows sent since the last call, taken from the head of the queue in order."""
        ids: list[int] = []
        while self._queued and self._queued[0].done():
            row_id = self._queued.popleft().result()
            if row_id is not None:
                ids.append(row_id)
        return ids

    def wait(self) -> list[int]:
        """Wait for every queued send; returns the ids ``sent`` has not returned yet."""
        self._finish_queued()
        return self.sent()

    def close(self) -> None:
        """Stop the thread after the queued sends."""
        self._executor.shutdown(wait=True)

    def _finish_queued(self) -> None:
        for future in self._queued:
            future.exception()  # waits; _send raises nothing

    def _send(self, row: Any) -> int | None:
        if self._failed.is_set():
            return None
        try:
            self._publisher.send_now(row)
        except Exception as exc:  # recorded by the driver's synchronous send of the row
            self._failed.set()
            logger.info("background send failed id=%d error=%r", row.id, exc)
            return None
        return int(row.id)
