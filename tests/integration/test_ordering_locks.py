"""An ordered topic's driver lock, and the late events an ingest task must run when it is busy."""

from __future__ import annotations

from sqlalchemy import Connection, text

from pipeline import ordering
from pipeline.config import Settings
from pipeline.db import get_engine
from pipeline.publisher import try_lock, unlock


def stored_event(conn: Connection, seq: int) -> int:
    return int(
        conn.execute(
            text(
                "INSERT INTO events (cache, topic, topic_sequence_number, event_timestamp, "
                "token_id, text, received_at, source, idempotency_key, epoch, arrival) "
                "VALUES ('c', 't', :seq, 0, '', 'x', now(), 'webhook', :key, 1, 'late') "
                "RETURNING id"
            ),
            {"seq": seq, "key": f"k{seq}"},
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
        unlock(holder, key)
        assert ordering.lock_or_late(other, "r", "c", "t", [behind, ahead]) == (True, [])
        assert not try_lock(holder, key)  # the second call took the lock
        unlock(other, key)
