"""Set-based, incremental roll-ups per (cache, topic, window).

A run marks the windows that new rows touch, then recomputes exactly those windows from the raw
tables with one ``INSERT … SELECT … GROUP BY … ON CONFLICT DO UPDATE`` per batch of windows; a
row whose values did not change is not rewritten, so a re-run changes nothing. Events fall in
windows by ``event_timestamp``, duplicate deliveries by ``received_at``, lost ranges by
``declared_at``. Events with an ``event_timestamp`` outside the years the receiver accepts
(``pipeline.models.EVENT_TIME_MIN_MS``/``MAX_MS``) fall in no window: they are counted, and
skipped, so that one absurd row cannot stop the roll-ups of every topic. New rows are found by
id (``watermark`` keeps that safe against ids that commit out of order). A lost range can
also vanish (its number arrived after all), so windows with lost messages of topics that got
late events are compared with lost_ranges.

Work is done in bounded chunks of ids and batches of windows, each its own transaction, so no
memory grows with a backlog, and a crash only means the next run repeats idempotent work. A
batch is recomputed by index range scans per window ("seek"), or, when a run covers a large part
of the events table, by one hash join over it split by time across ``workers`` connections
("scan"): the planner would pick a nested loop (it underestimates the join) or sort a million
rows by text for a merge join, both several times slower.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Connection, Engine, text

from pipeline.aggregation import rollup_sql as sql
from pipeline.aggregation import watermark
from pipeline.models import EVENT_TIME_MAX_MS, EVENT_TIME_MIN_MS

logger = logging.getLogger(__name__)

LOCK_KEY = 0x526F6C6C  # "Roll": advisory lock class of roll-up runs; the window length is the key
ID_CHUNK = 1_000_000
WINDOW_BATCH = 20_000
SCAN_SHARE = 0.125  # scan when a run's new ids exceed this share of the events table

Mode = Literal["auto", "seek", "scan"]
Key = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class RollupReport:
    """What one run did (``skipped``: another run of the same window length held the lock).

    ``events_out_of_range``: events read whose event_timestamp no window can hold (skipped).
    """

    window_s: int
    windows_marked: int = 0
    events_out_of_range: int = 0
    windows_written: int = 0
    ids_scanned: int = 0
    settled_event_id: int = 0
    remaining_ids: int = 0
    scan: bool = False
    elapsed_s: float = 0.0
    skipped: bool = False


def window_start(moment: datetime, window_s: int) -> datetime:
    """Start of the window holding ``moment``."""
    return datetime.fromtimestamp(int(moment.timestamp()) // window_s * window_s, tz=UTC)


def rollup(
    engine: Engine,
    window_s: int,
    *,
    keep_after: datetime | None = None,
    workers: int = 2,
    mode: Mode = "auto",
    max_ids: int | None = None,
) -> RollupReport:
    """Bring the roll-ups of ``window_s`` up to date with every committed row.

    Windows starting before ``keep_after`` (the retention cutoff) are never recomputed: their
    raw rows may be gone, and the roll-up is all that is left of them. ``max_ids`` bounds the
    new ids read per source in this run (``remaining_ids`` in the report says what is left).
    """
    started = time.perf_counter()
    lock = {"key": LOCK_KEY, "window_s": window_s}
    with engine.connect() as conn:
        if not conn.execute(text("SELECT pg_try_advisory_lock(:key, :window_s)"), lock).scalar():
            conn.rollback()
            return RollupReport(window_s, skipped=True)
        try:
            report = _run(engine, conn, window_s, keep_after, workers, mode, max_ids)
        except BaseException:
            conn.invalidate()  # ends the session, and with it the lock and the temp tables
            raise
        conn.execute(text("SELECT pg_advisory_unlock(:key, :window_s)"), lock)
        conn.commit()
    report = replace(report, elapsed_s=time.perf_counter() - started)
    if report.events_out_of_range:
        logger.warning(
            "rollup skipped events with event_timestamp out of range window_s=%d count=%d",
            window_s,
            report.events_out_of_range,
        )
    logger.info(
        "rollup window_s=%d marked=%d written=%d ids=%d scan=%s elapsed_s=%.3f",
        window_s,
        report.windows_marked,
        report.windows_written,
        report.ids_scanned,
        report.scan,
        report.elapsed_s,
    )
    return report


def _run(
    engine: Engine,
    conn: Connection,
    window_s: int,
    keep_after: datetime | None,
    workers: int,
    mode: Mode,
    max_ids: int | None,
) -> RollupReport:
    started = time.perf_counter()
    marks, unsettled = watermark.load(conn, window_s)
    todo = watermark.plan(marks, unsettled, watermark.snapshot(conn), max_ids)
    conn.commit()
    conn.execute(text(sql.CREATE_DIRTY))
    conn.execute(text(sql.CREATE_TOUCHED))
    conn.execute(text("TRUNCATE rollup_dirty, rollup_touched"))
    conn.commit()
    params = {"window_s": window_s, "window_ms": window_s * 1000}
    in_range = {"min_ms": EVENT_TIME_MIN_MS, "max_ms": EVENT_TIME_MAX_MS}
    ids = out_of_range = 0
    for ranges in (todo.recheck, todo.scan):
        for source, (low, high) in ranges.items():
            ids += high - low if source == "events" else 0
            for lo in range(low, high, ID_CHUNK):
                chunk = {**params, **in_range, "lo": lo, "hi": min(lo + ID_CHUNK, high)}
                result = conn.execute(text(sql.MARK_SQL[source]), chunk)
                if source == "events":
                    out_of_range += int(result.scalar_one())
                conn.commit()
    conn.execute(text(sql.MARK_UNLOST_SQL), params)
    marked_at = time.perf_counter()
    if keep_after is not None:
        first_kept = -(-int(keep_after.timestamp()) // window_s)
        conn.execute(text("DELETE FROM rollup_dirty WHERE bucket < :b"), {"b": first_kept})
    marked = int(conn.execute(text("SELECT count(*) FROM rollup_dirty")).scalar_one())
    rows = conn.execute(text("SELECT reltuples FROM pg_class WHERE oid = 'events'::regclass"))
    scan = mode == "scan" or (
        mode == "auto" and marked <= WINDOW_BATCH and ids > SCAN_SHARE * float(rows.scalar_one())
    )
    conn.commit()
    written = 0
    while keys := _take_batch(conn):
        slices = _split(keys, workers if scan else 1)
        if len(slices) == 1:
            written += _recompute(conn, slices[0], scan, params)
            continue
        with ThreadPoolExecutor(len(slices)) as pool:
            written += sum(pool.map(lambda part: _recompute_on(engine, part, params), slices))
    watermark.save(conn, window_s, todo)
    conn.commit()
    logger.debug(
        "rollup marked in %.3f s, recomputed in %.3f s",
        marked_at - started,
        time.perf_counter() - marked_at,
    )
    return RollupReport(
        window_s,
        windows_marked=marked,
        events_out_of_range=out_of_range,
        windows_written=written,
        ids_scanned=ids,
        settled_event_id=todo.marks["events"].settled_id,
        remaining_ids=todo.remaining,
        scan=scan,
    )


def _take_batch(conn: Connection) -> list[Key]:
    keys = conn.execute(text(sql.TAKE_BATCH_SQL), {"n": WINDOW_BATCH}).all()
    conn.commit()
    return [(cache, topic, int(bucket)) for cache, topic, bucket in keys]


def _split(keys: list[Key], parts: int) -> list[list[Key]]:
    """Contiguous slices (keys are in time order), so each slice covers its own time range."""
    size = -(-len(keys) // max(1, parts))
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def _recompute_on(engine: Engine, keys: Sequence[Key], params: dict[str, int]) -> int:
    with engine.connect() as conn:
        return _recompute(conn, keys, True, params)


def _recompute(conn: Connection, keys: Sequence[Key], scan: bool, params: dict[str, int]) -> int:
    """Recompute the windows ``keys`` in one transaction; return how many rows changed."""
    conn.execute(text(sql.CREATE_BATCH))
    conn.execute(text("TRUNCATE rollup_batch"))
    conn.execute(
        text(sql.FILL_BATCH_SQL),
        {
            "caches": [key[0] for key in keys],
            "topics": [key[1] for key in keys],
            "buckets": [key[2] for key in keys],
        },
    )
    conn.execute(text("ANALYZE rollup_batch"))
    conn.execute(text("SET LOCAL work_mem = '128MB'"))
    if scan:
        for setting in ("enable_nestloop", "enable_mergejoin", "max_parallel_workers_per_gather"):
            conn.execute(text(f"SET LOCAL {setting} = 0"))
    window_ms = params["window_ms"]
    bounds = {"low_ms": keys[0][2] * window_ms, "high_ms": (keys[-1][2] + 1) * window_ms}
    changed = conn.execute(text(sql.recompute_sql(scan)), {**params, **bounds}).rowcount
    conn.execute(text("TRUNCATE rollup_batch"))
    conn.commit()
    return int(changed)
