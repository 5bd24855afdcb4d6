"""How long a group-commit batch collects before it goes: the pure spacing policy.

No I/O and no clock: times (``time.perf_counter()`` seconds) are passed in, so the policy is
tested on its own. ``pipeline.ingest.group_commit`` feeds it arrivals, flushes and what each send
learned of the broker's queue (``Backlog``), and asks it how long the next batch waits.

The wait adapts to the workers: a Redis ``LPUSH`` answers with the queue's length, and while
batches are waiting there (the workers are behind), a new batch would wait anyway, so it
collects for longer (``wait_s`` times the waiting batches, at most ``backlog_wait_s``). Bigger
batches cost the workers less per event, so they catch up instead of falling further behind
(after an outage, a queue of small batches drained several times slower than one of large
ones); with an empty queue a batch goes at once. While the workers are behind (a send found batches
waiting, within the last ``BEHIND_HOLD_S``; always, for a sender that cannot tell) and requests
arrive faster than one per ``interval_s`` (a moving average of the gaps between them), a batch
also waits until ``interval_s`` after the previous one was sent, so requests share batches
instead of each paying a worker's per-batch cost. While the workflow stage reports running late
(``workflows.backpressure``: a backlog behind an ordered topic's driver, which the queue does not
show), batches are spaced ``max_wait_s`` apart instead, and so they always are for a sender that
cannot tell either backlog. Workers that keep up, and traffic too slow to group, are not held
back.
"""

from __future__ import annotations

from dataclasses import dataclass

GAP_WEIGHT = 0.3
"""Weight of the newest gap between requests in their moving average."""
BEHIND_HOLD_S = 1.0
"""Spacing stays on this long after a send last found batches waiting in the broker's queue."""
GAP_CAP_S = 0.1
"""Longer gaps count as this long: a burst after a quiet spell is spaced from its ~4th request."""


@dataclass(frozen=True)
class Backlog:
    """What a send learned of the workers: how many batches now wait in the broker's queue (its
    own included), and whether the workflow stage reports running late
    (``pipeline.workflows.backpressure``)."""

    queued: int
    lagging: bool = False


class Spacing:
    """The policy's state: what it knows of the traffic and of the workers."""

    def __init__(
        self, wait_s: float, max_wait_s: float, interval_s: float, backlog_wait_s: float = 0.0
    ) -> None:
        self.wait_s = wait_s
        self.max_wait_s = max(wait_s, max_wait_s)
        self.backlog_wait_s = max(self.max_wait_s, backlog_wait_s)
        self.interval_s = interval_s
        self.last_flush = -1e9  # when the last batch was sent
        self.last_arrival = -1e9  # when the last request arrived
        self.gap_s = 0.0  # moving average of the gaps between requests
        self.behind_until = -1e9  # until when the workers count as behind
        self.lagging = False  # whether the last send found the workflow stage running late
        self.knows_backlog = False  # whether sends report the broker queue's length
        self.waiting = 0  # batches in the broker's queue after the last send, besides that one

    def arrived(self, now: float) -> None:
        """A request arrived at ``now``: fold its gap into the moving average."""
        gap_s = min(GAP_CAP_S, now - self.last_arrival)
        self.gap_s += GAP_WEIGHT * (gap_s - self.gap_s)
        self.last_arrival = now

    def flushed(self, now: float) -> None:
        """A batch went at ``now``."""
        self.last_flush = now

    def learned(self, backlog: Backlog, now: float) -> bool:
        """Take in what a send found at ``now``; True if the workflow stage's lateness changed."""
        self.waiting = max(0, backlog.queued - 1)
        self.knows_backlog = True
        if self.waiting:
            self.behind_until = now + BEHIND_HOLD_S
        changed = backlog.lagging != self.lagging
        self.lagging = backlog.lagging
        return changed

    def wait_s_at(self, now: float) -> float:
        """How long the next batch collects: longer while batches wait in the broker (up to
        ``backlog_wait_s``), and at least until ``interval_s`` after the previous batch was sent
        while the workers are behind and requests come faster than one per ``interval_s``
        (``max_wait_s`` instead of ``interval_s`` while the workflow stage runs late, or always
        for a sender that reports no backlog; no spacing if ``interval_s`` is 0)."""
        backlog_s = min(self.backlog_wait_s, self.wait_s * self.waiting)
        spacing_s = 0.0
        # A sender that cannot tell (not Redis) may hide either backlog: space widely.
        wide = self.lagging or not self.knows_backlog
        behind = wide or now < self.behind_until
        interval_s = self.max_wait_s if wide and self.interval_s else self.interval_s
        if behind and self.gap_s < interval_s:
            spacing_s = self.last_flush + interval_s - now
        return max(backlog_s, min(self.max_wait_s, spacing_s))
