"""What the dashboard's pages share: settings, the database, the login, probes, running replays."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from pipeline.aggregation.retention import retention_cutoff
from pipeline.aggregation.rollups import rollup
from pipeline.config import Settings
from pipeline.dashboard.auth import Credentials
from pipeline.dashboard.probes import ReceiverScraper

if TYPE_CHECKING:
    from celery import Celery

REFRESH_S = 5.0
WORKERS_CACHE_S = 5.0


@dataclass
class Dashboard:
    """What the pages share: settings, the database, the login, probes and running replays."""

    settings: Settings
    engine: Engine
    credentials: Credentials
    receiver: ReceiverScraper
    celery: Celery
    replays: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    _rolled_at: float = 0.0
    _workers: tuple[float, list[str] | None] = (0.0, None)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def window_s(self) -> int:
        """The roll-up window the totals and charts use."""
        return self.settings.pipeline_rollup_window_s

    def refresh_rollups(self) -> None:
        """Bring roll-ups up to date at most every REFRESH_S (incremental, like `pipeline
        stats`), so totals are live without waiting for beat's next run."""
        if not self._lock.acquire(blocking=False):
            return  # another page is refreshing: this one shows the roll-ups as they are
        try:
            if time.monotonic() - self._rolled_at < REFRESH_S:
                return
            keep_after = retention_cutoff(self.settings.pipeline_retention_days)
            rollup(self.engine, self.window_s, keep_after=keep_after)
            self._rolled_at = time.monotonic()
        finally:
            self._lock.release()

    def workers(self) -> list[str] | None:
        """Workers answering a ping, asked at most every WORKERS_CACHE_S."""
        from pipeline.dashboard.probes import workers_up

        asked_at, names = self._workers
        if time.monotonic() - asked_at > WORKERS_CACHE_S:
            names = workers_up(self.settings)
            self._workers = (time.monotonic(), names)
        return names
