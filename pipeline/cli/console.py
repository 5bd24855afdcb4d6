"""What `pipeline up` prints while it runs: its children's warnings and a throughput line.

The children write their logs to files under ``<home>/logs``; the console gets only the lines at
WARNING or above (read back from those files, so a slow terminal never blocks a child) and, every
``interval_s``, one line of throughput when something changed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from pipeline.config import Settings
from pipeline.ingest.queue_depth import QueueDepthCollector

LOUD = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")
"""A log line worth the console: our format, Celery's (``WARNING/MainProcess``) and uvicorn's."""


class LogEcho:
    """Loud lines the children appended to ``log_dir/*.log`` since the last look."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        # What was there before this stack started is an earlier run's.
        self._offsets = {path: path.stat().st_size for path in log_dir.glob("*.log")}

    def lines(self) -> Iterator[str]:
        """New loud lines, each prefixed with the child's name."""
        for path in sorted(self.log_dir.glob("*.log")):
            start = self._offsets.get(path, 0)
            try:
                with path.open("rb") as handle:
                    handle.seek(start)
                    chunk = handle.read()
            except OSError:
                continue
            complete = chunk.rfind(b"\n") + 1  # a half-written line waits for the next look
            self._offsets[path] = start + complete
            for raw in chunk[:complete].decode(errors="replace").splitlines():
                if LOUD.search(raw):
                    yield f"[{path.stem}] {raw}"


THROUGHPUT_SQL = text(
    "SELECT (SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables"
    " WHERE relname = 'events'),"
    " (SELECT count(*) FROM outbox WHERE status = 'sent')"
)


class Throughput:
    """Events stored and outbox rows sent per second since the last line, and the ingest queue."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.queues = QueueDepthCollector(settings)
        self._last: tuple[float, int, int, int] | None = None

    def line(self) -> str | None:
        """The throughput line, or None when nothing changed since the last call (or on the
        first call, which takes the baseline)."""
        with self.engine.connect() as conn:
            stored, sent = (int(value) for value in conn.execute(THROUGHPUT_SQL).one())
        try:  # the ingest queue only: beat's periodic tasks come and go on the others
            queued = self.queues.depths()["ingest"]
        except Exception:  # the broker is down: the warnings say why; show what we know
            queued = -1
        now = time.monotonic()
        last, self._last = self._last, (now, stored, sent, queued)
        if last is None or (stored, sent, queued) == last[1:]:
            return None
        elapsed = max(now - last[0], 1e-3)
        stored_per_s = max(stored - last[1], 0) / elapsed
        sent_per_s = max(sent - last[2], 0) / elapsed
        depth = "?" if queued < 0 else str(queued)
        return (
            f"throughput  events stored {stored_per_s:.1f}/s   outbox sent {sent_per_s:.1f}/s"
            f"   ingest queue {depth}"
        )


def console_ticker(
    echo: Callable[[str], None], logs: LogEcho, throughput: Throughput, interval_s: float = 10.0
) -> Callable[[], None]:
    """A tick for the supervisor's wait loop: echo loud log lines, and throughput when due."""
    next_at = time.monotonic()

    def tick() -> None:
        nonlocal next_at
        for loud in logs.lines():
            echo(loud)
        if time.monotonic() >= next_at:
            next_at = time.monotonic() + interval_s
            try:
                line = throughput.line()
            except SQLAlchemyError:  # Postgres is down: the children's errors say so
                return
            if line is not None:
                echo(line)

    return tick
