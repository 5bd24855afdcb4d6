"""Backpressure from the workflow stage to the receivers' group commit.

The group commit sees a backlog in the ingest queue by itself (each ``LPUSH`` answers with the
queue's length), but not one behind an ordered topic's driver: while one pool process drives a
topic, the others take each new batch at once, store it, find the topic busy and leave its events
to the driver. The queue stays empty while the driver falls further behind, and small batches
keep costing the box their per-batch work. So a driver that runs an event more than ``lag_s``
after it was received says so in a short-lived Redis key, and receivers that see it in their next
push space batches further apart (``pipeline.ingest.group_commit``) until the key expires.

Redis brokers only: with any other broker the receiver cannot read the key, and always spaces
batches as widely as it does here while the key is set.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

import redis

from pipeline.stores import is_redis, redis_url

logger = logging.getLogger(__name__)

LAGGING = "pipeline:workflows:lagging"
"""Present while some driver ran an event late within the last ``HOLD_MS``."""
HOLD_MS = 2000
"""How long one report keeps receivers spacing batches widely."""
LAG_S = 0.1
"""An event run this long after it was received counts as late: at 200 events/s the whole path
takes ~15 ms while the driver keeps up, and a scheduling hiccup may add tens of ms once; a driver
that falls behind gets later with every event."""
REPORT_EVERY_S = 0.25
"""A process writes the key at most this often: it is a broker write (fsynced) per report."""
TIMEOUT_S = 0.2
"""The driver waits at most this long for a report, and after a failed one stays quiet for
``FAILED_QUIET_S``: an unresponsive broker must not stall it."""
FAILED_QUIET_S = 5.0


class LagReporter:
    """Tells receivers, through the broker, that this process runs events late."""

    def __init__(self, broker: str, lag_s: float = LAG_S) -> None:
        self.lag_s = lag_s
        self._client = None
        if is_redis(broker):
            self._client = redis.Redis.from_url(
                redis_url(broker), socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
            )
        self._quiet_until = 0.0

    def observe(self, received_at: datetime) -> bool:
        """Note that an event received at ``received_at`` runs now; True if that was reported
        as late (not again within REPORT_EVERY_S)."""
        if self._client is None or time.time() - received_at.timestamp() < self.lag_s:
            return False
        now = time.monotonic()
        if now < self._quiet_until:
            return False
        self._quiet_until = now + REPORT_EVERY_S
        try:
            self._client.set(LAGGING, b"1", px=HOLD_MS)
        except redis.RedisError as exc:  # spacing is an optimisation: the events are safe
            self._quiet_until = now + FAILED_QUIET_S
            logger.warning("workflow lag not reported error=%r", exc)
            return False
        return True

    def close(self) -> None:
        """Release the connection."""
        if self._client is not None:
            self._client.close()
