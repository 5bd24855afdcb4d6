"""An ordered topic's driver lock, the late events an ingest task must run when it is busy, and
what a driver's peek, cursor moves and turns do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, text

from pipeline.config import Settings
from pipeline.db import get_engine
from pipeline.outbound.outbox_sql import try_lock, unlock
from pipeline.outbound.publisher import Publisher
from pipeline.sequencing.rules import Delivery, SequencePolicy, advance
from pipeline.sequencing.state import TopicCursor
from pipeline.workflows import route_cursors as ordering
from pipeline.workflows.dispatch import nudge
from pipeline.workflows.outbox import commit_result
from pipeline.workflows.routes import load_routes
from pipeline.workflows.runner import WorkflowRunner


def stored_event(conn: Connection, seq: int, topic: str = "t") -> int:
    return int(
        conn.execute(
            text(
                "INSERT INTO events (cache, topic, topic_sequence_number, event_timestamp, "
                "token_id, text, received_at, source, idempotency_key, epoch, arrival) "
                "VALUES ('c', :topic, :seq, 0, '', 'x', now(), 'webhook', :key, 1, 'late') "
                "RETURNING id"
            ),
            {"seq": seq, "key": f"k{seq}", "topic": topic},
        ).scalar()
    )


def test_a_busy_topic_reports_which_new_events_came_too_late(db: Settings) -> None:
    engine = get_engine(db)
    with engine.begin() as conn:
        behind, ahead = stored_event(conn, 3), stored_event(conn, 9)
        ordering.ensure_cursor(conn, "r", "c", "t")
        conn.execute(
            text("UPDATE route_cursors SET epoch = 1, seq = 5, event_id = :id"), {"id": ahead}
        )
    key = "r\x1fc\x1ft"
    with engine.connect() as holder, engine.connect() as other:
        holder = holder.execution_options(isolation_level="AUTOCOMMIT")
        other = other.execution_options(isolation_level="AUTOCOMMIT")
        assert try_lock(holder, key)  # a driver is at work
        assert ordering.lock_or_late(other, "r", "c", "t", [behind, ahead]) == (False, [behind])
        # Knowing where the new events stand changes nothing but the questions asked.
        places = {behind: (1, 3), ahead: (1, 9)}
        found = ordering.lock_or_late(other, "r", "c", "t", [behind, ahead], places)
        assert found == (False, [behind])
        unlock(holder, key)
        assert ordering.lock_or_late(other, "r", "c", "t", [behind, ahead]) == (True, [])
        assert not try_lock(holder, key)  # the second call took the lock
        unlock(other, key)


def test_a_nudge_asks_once_for_all_its_topics_which_need_an_advance_and_what_came_late(
    db: Settings, tmp_path: Path
) -> None:
    engine = get_engine(db)
    with engine.begin() as conn:
        behind, ahead = stored_event(conn, 3), stored_event(conn, 9)  # topic t: a driver at work
        quiet = stored_event(conn, 1, topic="u")  # topic u: nobody at work
        ordering.ensure_cursor(conn, "r", "c", "t")
        conn.execute(
            text("UPDATE route_cursors SET epoch = 1, seq = 5, event_id = :id"), {"id": ahead}
        )
    routes = tmp_path / "routes.toml"
    routes.write_text(
        '[[routes]]\nname = "r"\ncache = "c"\ntopic = "*"\n'
        'workflow = "tasks.examples:uppercase"\nordered = true\n'
    )
    route = load_routes(routes).get("r")
    app = SentTasks()
    batch = {("c", "t"): [behind, ahead], ("c", "u"): [quiet]}
    with engine.connect() as holder, engine.connect() as conn:
        holder = holder.execution_options(isolation_level="AUTOCOMMIT")
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        assert try_lock(holder, "r\x1fc\x1ft")
        assert nudge(cast(Any, app), conn, route, batch) == 2
        assert app.sent == [
            ("tasks.workflows.advance", ("r", "c", "u", [quiet])),
            ("tasks.workflows.run", ("r", behind, "single")),  # the driver passed it: late
        ]
        assert try_lock(conn, "r\x1fc\x1fu")  # the free topic's lock was let go
        unlock(conn, "r\x1fc\x1fu")
        app.sent.clear()
        # u's advance is on its way, t's late event claimed: the same batch again sends nothing.
        assert nudge(cast(Any, app), conn, route, batch) == 0
        assert app.sent == []
        unlock(holder, "r\x1fc\x1ft")


def sequenced(conn: Connection, *seqs: int) -> None:
    """Record the topic's sequencing state as if ``seqs`` had arrived (gaps still open)."""
    deliveries = [Delivery(i, seq, 500 + i, 500 + i) for i, seq in enumerate(seqs)]
    state, _ = advance(TopicCursor(), deliveries, 1_000, SequencePolicy(reorder_window_ms=60_000))
    conn.execute(
        text(
            "INSERT INTO topic_cursors (cache, topic, state) VALUES ('c', 't', CAST(:s AS jsonb))"
        ),
        {"s": json.dumps(state.to_json())},
    )


def test_a_peek_returns_the_released_events_after_the_cursor_in_order(db: Settings) -> None:
    engine = get_engine(db)
    with engine.begin() as conn:
        ids = {seq: stored_event(conn, seq) for seq in (4, 1, 3, 2, 6)}  # 5 is still missing
        sequenced(conn, 1, 2, 3, 4, 6)
        ordering.ensure_cursor(conn, "r", "c", "t")
        conn.execute(
            text("UPDATE route_cursors SET epoch = 1, seq = 1, event_id = :id"), {"id": ids[1]}
        )
        at = ordering.peek(conn, "r", "c", "t")
    assert at is not None
    assert [event.id for event in at.events] == [ids[2], ids[3], ids[4]]  # 6 waits for 5


def test_a_cursor_move_reports_the_events_it_passes_over_without_running_them(
    db: Settings,
) -> None:
    engine = get_engine(db)
    with engine.begin() as conn:
        first, skipped, ran, target = (stored_event(conn, seq) for seq in (1, 2, 3, 4))
        ordering.ensure_cursor(conn, "r", "c", "t")
        conn.execute(
            text("UPDATE route_cursors SET epoch = 1, seq = 1, event_id = :id"), {"id": first}
        )
        conn.execute(
            text("INSERT INTO workflow_runs (route, event_id, status) VALUES ('r', :id, 'done')"),
            {"id": ran},
        )
        event = ordering.load_event(conn, target)
        since = ordering.position(conn, "r", "c", "t")
        move = ordering.move_cursor("r", event, expect_inflight=False, since=since)
        committed = commit_result(conn, "r", target, [], key="r\x1fc\x1ft", move=move)
        cursor = conn.execute(text("SELECT seq, event_id FROM route_cursors")).one()
    # Number 2 came after the peek that found 4 (it was declared lost, then arrived after all):
    # it runs late instead of never. Number 3 ran already (a late run or a replay).
    assert committed.skipped == [skipped]
    assert committed.pending == []
    assert tuple(cursor) == (4, target)


class SentTasks:
    """Stands in for the Celery app where a driver only sends tasks: records them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    def send_task(self, name: str, args: tuple[Any, ...] = (), **_: Any) -> None:
        self.sent.append((name, tuple(args)))


def test_a_driver_runs_what_lies_ahead_in_order_and_hands_over_what_came_too_late(
    db: Settings, tmp_path: Path
) -> None:
    engine = get_engine(db)
    with engine.begin() as conn:
        ids = {seq: stored_event(conn, seq) for seq in range(1, 7)}
        sequenced(conn, *range(1, 7))
        ordering.ensure_cursor(conn, "r", "c", "t")
        conn.execute(
            text("UPDATE route_cursors SET epoch = 1, seq = 5, event_id = :id"), {"id": ids[5]}
        )
        for seq in (1, 2, 4, 5):  # 3 was declared lost, then stored after the cursor passed it
            conn.execute(
                text(
                    "INSERT INTO workflow_runs (route, event_id, status) VALUES ('r', :id, 'done')"
                ),
                {"id": ids[seq]},
            )
    routes = tmp_path / "routes.toml"
    routes.write_text(
        '[[routes]]\nname = "r"\ncache = "c"\ntopic = "t"\n'
        'workflow = "tasks.examples:uppercase"\nordered = true\n'
    )
    table = load_routes(routes)
    app = SentTasks()
    runner = WorkflowRunner(db, engine, table, cast(Any, app), Publisher(db, engine))
    new = [ids[3], ids[6]]
    ran = runner.drive_topic(table.get("r"), "c", "t", new, 1.0, {ids[3]: (1, 3), ids[6]: (1, 6)})
    with engine.connect() as conn:
        cursor = conn.execute(text("SELECT seq, event_id FROM route_cursors")).one()
        runs = dict(conn.execute(text("SELECT event_id, status FROM workflow_runs")).all())
    assert ran == 1  # number 6, in order
    assert tuple(cursor) == (6, ids[6])
    assert app.sent == [("tasks.workflows.run", ("r", ids[3], "single"))]  # 3 runs late
    assert (runs[ids[3]], runs[ids[6]]) == ("running", "done")
