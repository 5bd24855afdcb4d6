"""Roll-up benchmark: full roll-up of N stored events, then an incremental run after M more.

    .venv/bin/python benchmarks/rollup_bench.py [--events 1000000] [--topics 100] [--new 10000]

Starts a fresh embedded Postgres in a temporary directory (or uses --database-url, whose tables
it TRUNCATES), bulk-loads events with INSERT … SELECT generate_series (webhook-sized rows with a
raw body, ~1 % late arrivals, some duplicates and lost ranges, one hour of event time), and
prints the timings. Targets: full ≤ 3 s, incremental ≤ 0.2 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

from pipeline.aggregation.rollups import rollup
from pipeline.cli import migrate
from pipeline.config import Settings
from pipeline.stores import EmbeddedPostgres

WINDOW_S = 60
BASE_MS = 1_790_000_000_000  # an arbitrary start of event time, aligned to a minute

LOAD_EVENTS = """
INSERT INTO events (cache, topic, topic_sequence_number, sequence_page, event_timestamp,
    publish_timestamp, token_id, text, raw_body, received_at, source, idempotency_key,
    epoch, arrival)
SELECT 'bench', 'topic-' || (g % :topics), g / :topics + 1, NULL, ts, ts + 5 + g % 40,
    CASE WHEN g % 10 = 0 THEN 'token-' || (g % 37) ELSE '' END,
    'message number ' || g,
    '{"cache":"bench","topic":"topic-' || (g % :topics) || '","event_timestamp":' || ts
        || ',"publish_timestamp":' || (ts + 5) || ',"topic_sequence_number":'
        || (g / :topics + 1) || ',"token_id":"","text":"message number ' || g || '"}',
    to_timestamp((ts + 20 + g % 90) / 1000.0), 'webhook', 't' || ts || ':' || (g / :topics + 1),
    1, CASE WHEN g % 97 = 0 THEN 'late' ELSE 'in_order' END
FROM generate_series(:first, :last) AS g, LATERAL (SELECT (:base + g * :step_ms)::bigint AS ts) AS t
"""
LOAD_DUPLICATES = """
INSERT INTO duplicate_deliveries (cache, topic, epoch, topic_sequence_number, received_at)
SELECT 'bench', 'topic-' || (g % :topics), 1, g, to_timestamp((:base + g * :step_ms) / 1000.0)
FROM generate_series(:first, :last, 1000) AS g
"""
LOAD_LOST = """
INSERT INTO lost_ranges (cache, topic, epoch, first_seq, last_seq, declared_at)
SELECT 'bench', 'topic-' || (g % :topics), 1, g, g + g % 3,
    to_timestamp((:base + g * :step_ms) / 1000.0)
FROM generate_series(:first, :last, 10000) AS g
"""


def load(engine: Engine, first: int, last: int, topics: int, step_ms: float) -> float:
    """Insert events first..last (and some duplicates and lost ranges); return seconds.

    A big load drops the events table's secondary indexes and builds them again afterwards,
    which is several times faster than maintaining them row by row.
    """
    params = {"first": first, "last": last, "topics": topics, "base": BASE_MS, "step_ms": step_ms}
    started = time.perf_counter()
    rebuild = last - first >= 100_000
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        indexes = conn.execute(
            text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events'"
                " AND indexname <> 'pk_events' AND indexname NOT LIKE 'uq_%'"
            )
        ).all()
        for name, _ in indexes if rebuild else ():
            conn.execute(text(f"DROP INDEX {name}"))
        for sql in (LOAD_EVENTS, LOAD_DUPLICATES, LOAD_LOST):
            conn.execute(text(sql), params)
        for _, definition in indexes if rebuild else ():
            conn.execute(text(definition))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE events, duplicate_deliveries, lost_ranges"))
    return time.perf_counter() - started


def timed_rollup(engine: Engine, label: str) -> float:
    """Run one roll-up and print what it did."""
    report = rollup(engine, WINDOW_S)
    print(
        f"{label:<24} {report.elapsed_s:7.3f} s   windows marked={report.windows_marked}"
        f" written={report.windows_written} ids scanned={report.ids_scanned}"
    )
    return report.elapsed_s


def run(url: str, events: int, topics: int, new: int) -> None:
    """Load, roll up, add, roll up again, and print the timings."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE events, duplicate_deliveries, lost_ranges, rollups, rollup_watermarks"
                " RESTART IDENTITY"
            )
        )
    step_ms = 3_600_000 / events  # one hour of event time
    print(f"load {events} events: {load(engine, 1, events, topics, step_ms):.1f} s")
    full = timed_rollup(engine, "full roll-up")
    timed_rollup(engine, "re-run, nothing new")
    print(f"load {new} more: {load(engine, events + 1, events + new, topics, step_ms):.1f} s")
    incremental = timed_rollup(engine, f"incremental (+{new})")
    timed_rollup(engine, "re-run, nothing new")
    with engine.connect() as conn:
        total = conn.execute(text("SELECT sum(events) FROM rollups")).scalar_one()
    assert total == events + new, f"rolled up {total} events, stored {events + new}"
    print(f"full {full:.3f} s (target 3), incremental {incremental:.3f} s (target 0.2)")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--topics", type=int, default=100)
    parser.add_argument("--new", type=int, default=10_000)
    parser.add_argument("--database-url", default=None, help="use this Postgres (truncated!)")
    args = parser.parse_args()
    if args.database_url:
        migrate.upgrade(Settings(database_url=args.database_url))
        run(args.database_url, args.events, args.topics, args.new)
        return
    with tempfile.TemporaryDirectory(prefix="rollup-bench-") as home:
        server = EmbeddedPostgres(Path(home))
        url = server.start()
        try:
            migrate.upgrade(Settings(database_url=url, pipeline_home=Path(home)))
            run(url, args.events, args.topics, args.new)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
