"""The pipeline around the database: broker queue depths, workers answering, receiver counters.

Each probe answers within about a second or reports itself down; the page shows "down" rather
than waiting on a store that does not answer.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from pipeline.config import Settings

logger = logging.getLogger(__name__)

_DOOR_RATES_SQL = """
SELECT source, count(*) AS n FROM events
WHERE received_at > now() - make_interval(secs => :rate_s)
GROUP BY source
"""


@dataclass(frozen=True, slots=True)
class Health:
    """The pipeline at one moment."""

    queues: dict[str, int] | None = None
    """Messages waiting per queue (None: the broker did not answer)."""
    workers: list[str] | None = None
    """Workers that answered a ping (None: the broker did not answer)."""
    stored_per_s: dict[str, float] = field(default_factory=dict)
    """Events stored per second by door (webhook, subscription, …) over the rate window."""
    receiver_up: bool = False
    accepted_per_s: float | None = None
    """Webhooks the receiver accepted per second since the previous probe."""
    rejections: dict[str, int] = field(default_factory=dict)
    """Webhooks rejected or answered 503 since the receiver started, by error code."""


def queue_depths(settings: Settings) -> dict[str, int] | None:
    """Waiting messages per Celery queue, or None if the broker is down."""
    from pipeline.ingest.queue_depth import QueueDepthCollector

    try:
        return QueueDepthCollector(settings).depths()
    except Exception as exc:  # a page must render while the broker is down
        logger.warning("queue depth probe failed error=%r", exc)
        return None


def workers_up(settings: Settings, timeout_s: float = 1.0) -> list[str] | None:
    """Names of the workers that answer a broker ping, or None if the broker is down."""
    from celery import Celery

    from pipeline.celery_app import configure

    probe = Celery("pipeline-dashboard-probe")
    configure(probe, settings)
    try:
        replies = probe.control.ping(timeout=timeout_s)
    except Exception as exc:  # a page must render while the broker is down
        logger.warning("worker ping failed error=%r", exc)
        return None
    finally:
        probe.close()
    return sorted(name for reply in replies for name in reply)


def stored_rates(engine: Engine, rate_s: int) -> dict[str, float]:
    """Events stored per second over the last ``rate_s`` seconds, by door."""
    with engine.connect() as conn:
        rows = conn.execute(text(_DOOR_RATES_SQL), {"rate_s": rate_s}).all()
    return {str(row.source): row.n / rate_s for row in rows}


@dataclass
class ReceiverScraper:
    """Reads the receiver's /metrics; accepted/s is the difference between two reads."""

    url: str | None
    _last: tuple[float, float] | None = None

    def scrape(self) -> tuple[bool, float | None, dict[str, int]]:
        """(up, accepted per second, rejections by code)."""
        if not self.url:
            return False, None, {}
        try:
            body = httpx.get(f"{self.url}/metrics", timeout=1.0).text
        except httpx.HTTPError:
            return False, None, {}
        accepted = 0.0
        rejections: dict[str, int] = defaultdict(int)
        for family in text_string_to_metric_families(body):
            if family.name != "pipeline_webhook_requests":
                continue
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                if sample.labels.get("outcome") == "accepted":
                    accepted += sample.value
                elif sample.value:
                    rejections[sample.labels.get("reason", "unknown")] += int(sample.value)
        now = time.monotonic()
        rate = None
        if self._last is not None and now > self._last[0]:
            rate = max(0.0, (accepted - self._last[1]) / (now - self._last[0]))
        self._last = (now, accepted)
        return True, rate, dict(rejections)
