"""Subscription leases on real Postgres: fair shares, takeover after expiry, durable positions."""

from __future__ import annotations

import time

from sqlalchemy import text

from pipeline.config import Settings
from pipeline.db import get_engine
from pipeline.ingest.store import store_batch
from pipeline.sequencing.store import policy_from
from pipeline.sources import leases
from pipeline.sources.items import encode_item, subscription_rows

TOPICS = [("c", f"t-{i}") for i in range(4)]


def round_for(settings: Settings, me: str, held: dict, ttl_s: float = 6.0) -> leases.Round:  # type: ignore[type-arg]
    with get_engine(settings).begin() as conn:
        return leases.lease_round(conn, me, TOPICS, held, ttl_s=ttl_s)


def test_two_listeners_split_the_topics_and_never_hold_one_twice(db: Settings) -> None:
    first = round_for(db, "a", {})
    assert sorted(first.taken) == TOPICS  # alone: every topic
    second = round_for(db, "b", {})
    assert second.taken == []  # nothing free yet
    again = round_for(db, "a", dict.fromkeys(first.held))  # now two live: a's share is 2
    assert len(again.surplus) == 2
    with get_engine(db).begin() as conn:
        for key in again.surplus:
            leases.release(conn, "a", key, (7, 3))
    second = round_for(db, "b", {})
    assert sorted(second.taken) == sorted(again.surplus)
    assert set(second.held.values()) == {(7, 3)}  # resumes where a released them
    with get_engine(db).connect() as conn:
        holders = conn.execute(text("SELECT holder, count(*) FROM subscription_leases GROUP BY 1"))
        assert dict(holders.all()) == {"a": 2, "b": 2}


def test_an_expired_lease_is_taken_over_and_its_old_holder_told(db: Settings) -> None:
    first = round_for(db, "gone", {}, ttl_s=0.5)
    time.sleep(1.0)  # "gone" renews no more: its leases and its liveness lapse together
    taken = round_for(db, "b", {}, ttl_s=0.5)
    assert sorted(taken.taken) == TOPICS
    late = round_for(db, "gone", dict.fromkeys(first.held))
    assert sorted(late.lost) == TOPICS  # it must stop reading them


def test_a_topic_whose_holder_recorded_no_position_resumes_past_its_newest_stored_item(
    db: Settings,
) -> None:
    now_ms = int(time.time() * 1000)
    items = [encode_item("c", "t-0", 9, seq, f"m{seq}", now_ms) for seq in (1, 2, 3)]
    store_batch(db, items, policy_from(db), "lease-batch", rows_of=subscription_rows)
    taken = round_for(db, "fresh", {})
    assert taken.held[("c", "t-0")] == (4, 9)
    assert taken.held[("c", "t-1")] == (0, 0)  # never consumed: live
