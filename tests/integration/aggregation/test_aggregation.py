"""Roll-ups against real Postgres: every column, idempotent re-runs, out-of-order commits.

Events are stored through the real storage path (ingest.store + sequencing.store, in this
process) or, where a test needs exact control of ids and transactions, by plain INSERTs.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, text

from pipeline.aggregation.rollups import LOCK_KEY, Mode, rollup
from pipeline.config import Settings
from pipeline.db import get_engine, session_scope
from pipeline.ingest.store import store_webhook_batch
from pipeline.sequencing.rules import SequencePolicy

WINDOW_S = 60
POLICY = SequencePolicy(reorder_window_ms=500, reset_idle_ms=1_000)
# A minute boundary ten minutes ago: W0 starts here, W1 a minute later, and so on.
BASE_MS = (int(time.time()) // 60 - 10) * 60_000


def window(n: int) -> datetime:
    return datetime.fromtimestamp(BASE_MS / 1000 + n * WINDOW_S, UTC)


def item(
    seq: int,
    event_ms: int,
    received_ms: int,
    *,
    topic: str = "room-1",
    publish_ms: int | None = None,
    token: str = "",
    text_value: str | None = None,
) -> list[Any]:
    """A receiver batch item: [Momento webhook body, received at ms]."""
    body = {
        "cache": "chat",
        "topic": topic,
        "event_timestamp": event_ms,
        "publish_timestamp": event_ms + 5 if publish_ms is None else publish_ms,
        "topic_sequence_number": seq,
        "token_id": token,
        "text": f"message {seq}" if text_value is None else text_value,
    }
    return [json.dumps(body), received_ms]


def store(settings: Settings, *items: list[Any]) -> None:
    """Store and sequence each item as its own batch, as the ingest task would."""
    for one in items:
        with session_scope(settings) as session:
            store_webhook_batch(session, [one], POLICY)


def rollups(settings: Settings, *, with_updated_at: bool = True) -> list[dict[str, Any]]:
    with get_engine(settings).connect() as conn:
        rows = conn.execute(text("SELECT * FROM rollups ORDER BY cache, topic, window_start"))
        found = [row._asdict() for row in rows]
    for row in found:
        row.pop("published_at")
        if not with_updated_at:
            row.pop("updated_at")
    return found


def percentile_cont(values: list[float], fraction: float) -> float:
    """Postgres's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def test_one_window_is_rolled_up_column_by_column(db: Settings) -> None:
    b = BASE_MS
    deliveries = [  # (seq, event ms, received ms, publish delay ms, token)
        (1, b + 1_000, b + 1_010, 4, "alice"),
        (2, b + 2_000, b + 2_020, 8, "bob"),
        (4, b + 4_000, b + 4_030, 2, "alice"),
        (3, b + 3_000, b + 4_100, 6, ""),  # late: 4 came first
        (7, b + 7_000, b + 7_050, 3, ""),  # opens the gap 5..6
        (8, b + 9_000, b + 9_500, 9, ""),  # 2 s after the gap opened: 5..6 declared lost
        (1, b + 30_000, b + 30_040, 5, "carol"),  # numbering fell back after idle: a reset
        (2, b + 31_000, b + 31_070, 7, ""),
    ]
    store(
        db,
        *(
            item(s, ev, rx, publish_ms=ev + delay, token=tok, text_value=f"é{s}")
            for s, ev, rx, delay, tok in deliveries
        ),
    )
    store(db, item(2, b + 2_000, b + 32_000, publish_ms=b + 2_008))  # a duplicate delivery
    store(db, item(9, b + 65_000, b + 65_010))  # next window
    report = rollup(get_engine(db), WINDOW_S)
    assert report.windows_written == 2
    w0 = rollups(db)[0]
    assert w0["window_start"] == window(0)
    assert w0["events"] == 8
    assert w0["bytes"] == sum(len(f"é{s}".encode()) for s, *_ in deliveries)
    assert (w0["first_seq"], w0["last_seq"]) == (1, 2)
    assert (w0["out_of_order"], w0["resets"], w0["duplicates"]) == (1, 1, 1)
    assert (w0["gaps"], w0["lost"]) == (1, 2)
    assert w0["distinct_tokens"] == 3
    publish = [float(delay) for *_, delay, _ in deliveries]
    receive = [float(rx - ev) for _, ev, rx, *_ in deliveries]
    for p, column in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        assert w0[f"publish_latency_{column}_ms"] == pytest.approx(percentile_cont(publish, p))
        assert w0[f"receive_latency_{column}_ms"] == pytest.approx(percentile_cont(receive, p))
    w1 = rollups(db)[1]
    assert (w1["window_start"], w1["events"], w1["lost"], w1["duplicates"]) == (window(1), 1, 0, 0)


def test_rerun_changes_nothing_and_new_rows_touch_only_their_windows(db: Settings) -> None:
    b = BASE_MS
    store(db, *(item(s, b + s * 1_000, b + s * 1_000 + 5) for s in range(1, 6)))
    store(db, *(item(s, b + 60_000 + s, b + 60_010 + s, topic="room-2") for s in range(1, 4)))
    engine = get_engine(db)
    rollup(engine, WINDOW_S)
    first = rollups(db)
    again = rollup(engine, WINDOW_S)
    assert (again.windows_marked, again.windows_written) == (0, 0)
    assert rollups(db) == first
    store(db, item(4, b + 60_500, b + 60_600, topic="room-2"))
    more = rollup(engine, WINDOW_S)
    assert (more.windows_marked, more.windows_written) == (1, 1)
    after = rollups(db)
    assert after[0] == first[0]  # room-1's window was not rewritten (same updated_at)
    assert (after[1]["events"], first[1]["events"]) == (4, 3)
    assert after[1]["updated_at"] > first[1]["updated_at"]


def insert_event(
    conn: Connection,
    seq: int,
    event_ms: int,
    *,
    topic: str = "room-1",
    arrival: str = "in_order",
    received_ms: int | None = None,
) -> None:
    conn.execute(
        text(
            "INSERT INTO events (cache, topic, topic_sequence_number, event_timestamp,"
            " publish_timestamp, token_id, text, received_at, source, idempotency_key, epoch,"
            " arrival) VALUES ('chat', :topic, :seq, :ev, :ev + 3, '', 'x', :rx, 'webhook',"
            " :key, 1, :arrival)"
        ),
        {
            "topic": topic,
            "seq": seq,
            "ev": event_ms,
            "rx": datetime.fromtimestamp(
                (event_ms + 20 if received_ms is None else received_ms) / 1000, UTC
            ),
            "key": f"t{event_ms}:{seq}",
            "arrival": arrival,
        },
    )


def test_a_row_committed_after_a_higher_id_is_still_rolled_up(db: Settings) -> None:
    engine = get_engine(db)
    slow = engine.connect()
    try:
        slow.execute(text("SAVEPOINT s"))  # ingest writes its rows in a savepoint, too
        insert_event(slow, 1, BASE_MS + 1_000)  # takes id 1, commits last
        with engine.begin() as fast:
            insert_event(fast, 2, BASE_MS + 2_000)  # id 2, committed first
        early = rollup(engine, WINDOW_S)
        assert rollups(db)[0]["events"] == 1
        assert early.settled_event_id == 0
        slow.execute(text("RELEASE SAVEPOINT s"))
        slow.commit()
    finally:
        slow.close()
    rollup(engine, WINDOW_S)
    assert rollups(db)[0]["events"] == 2
    settled = rollup(engine, WINDOW_S)
    assert settled.settled_event_id == 2


def test_seek_and_scan_recompute_the_same_rows(db: Settings) -> None:
    engine = get_engine(db)
    with engine.begin() as conn:
        for n in range(300):
            arrival = "late" if n % 7 == 0 else "reset" if n % 53 == 0 else "in_order"
            insert_event(
                conn, n, BASE_MS + n * 1_700 + n % 11, topic=f"room-{n % 3}", arrival=arrival
            )
    rollup(engine, WINDOW_S, mode="seek")
    seek = rollups(db, with_updated_at=False)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE rollups, rollup_watermarks"))
    report = rollup(engine, WINDOW_S, mode="scan", workers=2)
    assert report.scan
    assert rollups(db, with_updated_at=False) == seek
    assert len(seek) == 3 * 9
    assert sum(row["events"] for row in seek) == 300


def test_a_number_that_arrives_after_being_declared_lost_is_no_longer_counted(
    db: Settings,
) -> None:
    b = BASE_MS
    store(db, item(1, b + 1_000, b + 1_005), item(3, b + 3_000, b + 3_005))
    store(db, item(4, b + 62_000, b + 62_005))  # declares 2 lost, in window 1
    engine = get_engine(db)
    rollup(engine, WINDOW_S)
    assert [(r["window_start"], r["lost"]) for r in rollups(db)] == [(window(0), 0), (window(1), 1)]
    store(db, item(2, b + 2_000, b + 125_000))  # arrives in window 2, fills the gap
    report = rollup(engine, WINDOW_S)
    assert report.windows_marked == 2  # its event window (0) and the window that lost it (1)
    rows = rollups(db)
    assert [(r["window_start"], r["lost"], r["gaps"]) for r in rows] == [
        (window(0), 0, 0),
        (window(1), 0, 0),
    ]
    assert (rows[0]["events"], rows[0]["out_of_order"]) == (3, 1)


def test_a_backlog_rolled_up_in_capped_runs_ends_like_one_run(db: Settings) -> None:
    engine = get_engine(db)
    with engine.begin() as conn:
        for n in range(40):
            insert_event(conn, n, BASE_MS + n * 5_000, topic=f"room-{n % 2}")
    runs = []
    while not runs or runs[-1].remaining_ids:
        runs.append(rollup(engine, WINDOW_S, max_ids=7))
    assert [r.remaining_ids for r in runs] == [33, 26, 19, 12, 5, 0]
    capped = rollups(db, with_updated_at=False)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE rollups, rollup_watermarks"))
    rollup(engine, WINDOW_S)
    assert rollups(db, with_updated_at=False) == capped


def test_a_second_concurrent_run_returns_at_once(db: Settings) -> None:
    engine = get_engine(db)
    with engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k, :w)"), {"k": LOCK_KEY, "w": WINDOW_S})
        assert rollup(engine, WINDOW_S).skipped
        assert not rollup(engine, WINDOW_S * 2).skipped  # other window lengths run
        holder.execute(text("SELECT pg_advisory_unlock(:k, :w)"), {"k": LOCK_KEY, "w": WINDOW_S})
        holder.commit()
    assert not rollup(engine, WINDOW_S).skipped


def test_windows_before_keep_after_are_never_recomputed(db: Settings) -> None:
    engine = get_engine(db)
    with engine.begin() as conn:
        insert_event(conn, 1, BASE_MS + 1_000)
    rollup(engine, WINDOW_S)
    with engine.begin() as conn:
        insert_event(conn, 2, BASE_MS + 2_000)
    rollup(engine, WINDOW_S, keep_after=window(0) + timedelta(seconds=1))
    assert rollups(db)[0]["events"] == 1


@pytest.mark.parametrize("bad_ms", [1_352_408_701_009_006_080, 2**63 - 8, 0, 1_700_000_000])
def test_an_event_with_an_absurd_time_is_skipped_and_other_topics_still_roll_up(
    db: Settings, bad_ms: int
) -> None:
    engine = get_engine(db)
    with engine.begin() as conn:
        insert_event(conn, 1, BASE_MS + 1_000, topic="room-1")
        # stored before the receiver checked event_timestamp
        insert_event(conn, 1, bad_ms, topic="broken", received_ms=BASE_MS + 1_500)
        insert_event(conn, 2, BASE_MS + 2_000, topic="broken")
        insert_event(conn, 1, BASE_MS + 61_000, topic="room-2")
    modes: tuple[Mode, ...] = ("seek", "scan")
    for mode in modes:
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE rollups, rollup_watermarks"))
        report = rollup(engine, WINDOW_S, mode=mode)
        assert report.events_out_of_range == 1
        assert [(r["topic"], r["window_start"], r["events"]) for r in rollups(db)] == [
            ("broken", window(0), 1),
            ("room-1", window(0), 1),
            ("room-2", window(1), 1),
        ]
    again = rollup(engine, WINDOW_S)
    assert (again.events_out_of_range, again.windows_written) == (0, 0)
