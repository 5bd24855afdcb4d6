"""Routes of change records: parsing the routes file, and the outbox rows a record asks for."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import RoutesError
from pipeline.ingest.changes import ChangeRecord, parse_changes
from pipeline.workflows.change_outbox import ordering_key, plan, template_values
from pipeline.workflows.routes import RouteTable, parse_routes
from tests.change_support import stream_record

USER_ROUTE = """
[[routes]]
name = "user-cache"
changes = "dynamodb:user"
cache_set = { cache = "user", key = "{keys.id}", ttl_seconds = 300 }
publish = { cache = "user", topic = "user-changes" }
"""


def routes(text: str) -> RouteTable:
    return parse_routes(text, Path("routes.toml"))


def test_a_changes_route_is_parsed_apart_from_topic_routes() -> None:
    table = routes(USER_ROUTE + '\n[[routes]]\nname = "u"\ncache = "c"\ntopic = "t"\n'
                   'workflow = "tasks.examples:uppercase"\n')  # fmt: skip
    assert [r.name for r in table.routes] == ["u"]
    (route,) = table.changes
    assert (route.name, route.source, route.table, route.workflow) == (
        "user-cache", "dynamodb", "user", None
    )  # fmt: skip
    assert table.changes_matching("dynamodb", "user") == (route,)
    assert table.changes_matching("dynamodb", "users") == ()
    assert table.matching("dynamodb", "user") == ()


def test_globs_match_sources_and_tables() -> None:
    table = routes(USER_ROUTE.replace("dynamodb:user", "dynamo*:user-[ab]"))
    assert table.changes_matching("dynamodb-eu", "user-a")
    assert not table.changes_matching("dynamodb-eu", "user-c")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (USER_ROUTE.replace('"dynamodb:user"', '"dynamodb"'), 'changes must be "source:table"'),
        (USER_ROUTE.replace("{keys.id}", "{id}"), r"unknown field\(s\) \['id'\]"),
        (USER_ROUTE.replace("{keys.id}", "{keys.}"), "must be a name"),
        (USER_ROUTE.replace('name = "user-cache"', 'name = "x"\nordered = true'),
         "unknown key 'ordered'"),
        (USER_ROUTE.replace("300", "0"), "ttl_seconds"),
        (USER_ROUTE + 'workflow = "tasks.examples:weather"\n', "runs a Celery task"),
        ('[[routes]]\nname = "x"\nchanges = "a:b"\n', "needs publish, cache_set or both"),
    ],
)
def test_bad_changes_routes_are_refused_with_the_line(text: str, message: str) -> None:
    with pytest.raises(RoutesError, match=message):
        routes(text)


def _change(event: str, seq: int, **images: Any) -> ChangeRecord:
    body = json.dumps(stream_record(event, {"id": "u1"}, seq, **images))
    return parse_changes(body, "dynamodb")[0]


def test_an_upsert_sets_the_cache_and_publishes_the_record() -> None:
    record = _change("MODIFY", 9, new={"id": "u1", "score": Decimal("0.1000000000000000000001")},
                     old={"id": "u1", "score": 1})  # fmt: skip
    (planned,) = plan(routes(USER_ROUTE), record)
    assert planned.error is None
    cache_row, topic_row = planned.rows
    assert (cache_row["kind"], cache_row["target_cache"], cache_row["target_key"]) == (
        "cache_set", "user", "u1"
    )  # fmt: skip
    assert cache_row["payload"] == {
        "value": '{"id":"u1","score":0.1000000000000000000001}', "ttl_seconds": 300
    }  # fmt: skip
    assert (topic_row["kind"], topic_row["target_topic"]) == ("topic_publish", "user-changes")
    message = json.loads(topic_row["payload"]["text"])
    assert message["op"] == "upsert"
    assert message["event"] == "MODIFY"
    assert message["keys"] == {"id": "u1"}
    assert message["old"] == {"id": "u1", "score": 1}
    assert message["seq"] == "9"
    assert cache_row["ordering_key"] == topic_row["ordering_key"]
    assert topic_row["ordering_key"] == ordering_key("user-cache", record)


def test_a_remove_deletes_the_key_and_publishes_the_old_image() -> None:
    record = _change("REMOVE", 10, old={"id": "u1"})
    (planned,) = plan(routes(USER_ROUTE), record)
    cache_row, topic_row = planned.rows
    assert (cache_row["kind"], cache_row["target_key"], cache_row["payload"]) == (
        "cache_delete", "u1", {}
    )  # fmt: skip
    assert json.loads(topic_row["payload"]["text"])["new"] is None


def test_an_upsert_without_a_new_image_deletes_rather_than_leave_a_stale_value() -> None:
    record = _change("MODIFY", 11)  # a KEYS_ONLY stream
    (planned,) = plan(routes(USER_ROUTE), record)
    assert planned.rows[0]["kind"] == "cache_delete"


def test_template_values_are_the_records_scalars() -> None:
    record = _change("INSERT", 1, new={"id": "u1", "n": 3, "ok": True, "deep": {"a": 1}})
    values = template_values(record)
    assert values["keys.id"] == "u1"
    assert values["new.n"] == "3"
    assert values["new.ok"] == "true"
    assert "new.deep" not in values
    assert values["op"] == "upsert"


def test_a_template_naming_a_missing_field_fails_that_route_only() -> None:
    table = routes(USER_ROUTE.replace("{keys.id}", "{new.email}"))
    (planned,) = plan(table, _change("INSERT", 1, new={"id": "u1"}))
    assert planned.rows == []
    assert planned.error is not None
    assert "new.email" in planned.error


def test_a_workflow_transforms_the_record() -> None:
    table = routes(
        USER_ROUTE.replace("{keys.id}", "station:{station}")
        + 'workflow = "tasks.examples:station_headline"\n'
    )
    upsert = _change("INSERT", 1, new={"id": "u1", "location": "x", "temp_c": Decimal("21.5")})
    upsert_rows = plan(table, upsert)[0].rows
    assert [row["kind"] for row in upsert_rows] == ["cache_set", "topic_publish"]
    assert upsert_rows[1]["payload"] == {"text": "?: 21.5 C"}  # the key has no location
    assert upsert_rows[0]["target_key"] == "station:?"
    removed = plan(table, _change("REMOVE", 2, old={"id": "u1"}))[0].rows
    assert [row["kind"] for row in removed] == ["cache_delete", "topic_publish"]
    assert removed[1]["payload"] == {"text": "?: removed"}
