"""Change records in Postgres: stored once, applied per item in sequence order, tombstones."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from pipeline.config import Settings
from pipeline.db import get_engine
from pipeline.ingest.change_store import store_change_batch
from pipeline.workflows.routes import RouteTable, parse_routes
from tests.change_support import stream_record
from tests.conftest import count_rows

ROUTES = """
[[routes]]
name = "user-cache"
changes = "dynamodb:user"
cache_set = { cache = "user", key = "{keys.id}", ttl_seconds = 300 }
publish = { cache = "user", topic = "user-changes" }
"""


def table() -> RouteTable:
    return parse_routes(ROUTES, Path("routes.toml"))


def item(*records: dict[str, Any], source: str = "dynamodb") -> list[Any]:
    body = json.dumps(list(records) if len(records) > 1 else records[0])
    return [source, body, int(time.time() * 1000)]


def modify(seq: int, name: str, key: str = "u1") -> dict[str, Any]:
    return stream_record("MODIFY", {"id": key}, seq, new={"id": key, "name": name})


def outbox(settings: Settings) -> list[tuple[str, str | None, dict[str, Any]]]:
    with get_engine(settings).connect() as conn:
        rows = conn.execute(
            text("SELECT kind, target_key, payload FROM outbox ORDER BY id")
        ).all()
    return [(str(row.kind), row.target_key, row.payload) for row in rows]


def test_the_same_event_id_twice_is_stored_once_and_applied_once(db: Settings) -> None:
    record = modify(5, "ann")
    first = store_change_batch(db, [item(record), item(record)], table())
    again = store_change_batch(db, [item(record)], table())
    assert (len(first.new_ids), first.applied, first.duplicates) == (1, 1, 0)
    assert (len(again.new_ids), again.applied, again.duplicates) == (0, 0, 1)
    assert count_rows(db, "SELECT count(*) FROM change_records") == 1
    assert [kind for kind, _, _ in outbox(db)] == ["cache_set", "topic_publish"]


def test_the_plain_shape_is_keyed_by_table_keys_and_seq(db: Settings) -> None:
    plain = {"table": "user", "keys": {"id": "u1"}, "op": "upsert", "new": {"id": "u1"}, "seq": 3}
    store_change_batch(db, [item(plain, plain), item(plain)], table())
    store_change_batch(db, [item(plain | {"seq": 4})], table())
    assert count_rows(db, "SELECT count(*) FROM change_records") == 2


def test_out_of_order_modifies_apply_only_the_newer_ones(db: Settings) -> None:
    newest = store_change_batch(db, [item(modify(30, "c"))], table())
    older = store_change_batch(db, [item(modify(10, "a"), modify(20, "b"))], table())
    assert (newest.applied, older.applied, older.stale) == (1, 0, 2)
    values = [p["value"] for kind, _, p in outbox(db) if kind == "cache_set"]
    assert values == ['{"id":"u1","name":"c"}']
    assert count_rows(db, "SELECT count(*) FROM change_records WHERE NOT applied") == 2
    assert count_rows(db, "SELECT count(*) FROM change_items WHERE seq = 30") == 1


def test_a_batch_applies_its_records_in_sequence_order_whatever_their_order(db: Settings) -> None:
    result = store_change_batch(db, [item(modify(3, "c"), modify(1, "a"), modify(2, "b"))], table())
    assert result.applied == 3
    values = [p["value"] for kind, _, p in outbox(db) if kind == "cache_set"]
    assert values == ['{"id":"u1","name":"a"}', '{"id":"u1","name":"b"}', '{"id":"u1","name":"c"}']


def test_sequence_numbers_compare_as_big_integers_not_text(db: Settings) -> None:
    # As text "9..." > "10..."; as numbers the 22-digit one is newer.
    store_change_batch(db, [item(modify(9 * 10**20, "old"))], table())
    result = store_change_batch(db, [item(modify(10**21, "new"))], table())
    assert result.applied == 1


def test_remove_leaves_a_tombstone_that_a_late_modify_cannot_pass(db: Settings) -> None:
    store_change_batch(db, [item(modify(1, "a"))], table())
    removed = stream_record("REMOVE", {"id": "u1"}, 3, old={"id": "u1", "name": "a"})
    store_change_batch(db, [item(removed)], table())
    late = store_change_batch(db, [item(modify(2, "b"))], table())
    assert late.applied == 0
    assert count_rows(db, "SELECT count(*) FROM change_items WHERE deleted AND seq = 3") == 1
    assert [kind for kind, _, _ in outbox(db)] == [
        "cache_set", "topic_publish", "cache_delete", "topic_publish"
    ]  # fmt: skip


def test_items_are_independent(db: Settings) -> None:
    store_change_batch(db, [item(modify(5, "x", key="a"))], table())
    result = store_change_batch(db, [item(modify(1, "y", key="b"))], table())
    assert result.applied == 1
    assert [key for kind, key, _ in outbox(db) if kind == "cache_set"] == ["a", "b"]


def test_a_poison_item_is_dead_lettered_and_the_rest_stored(db: Settings) -> None:
    result = store_change_batch(db, [["dynamodb", "not json", 1], item(modify(1, "a"))], table())
    assert (result.dead, len(result.new_ids)) == (1, 1)
    assert count_rows(db, "SELECT count(*) FROM dead_letters WHERE kind = 'changes'") == 1


def test_records_without_a_matching_route_are_stored_and_applied_but_send_nothing(
    db: Settings,
) -> None:
    other = stream_record("INSERT", {"id": "o"}, 1, new={"id": "o"}, table="orders")
    result = store_change_batch(db, [item(other)], table())
    assert (len(result.new_ids), result.applied, result.outbox) == (1, 1, [])
