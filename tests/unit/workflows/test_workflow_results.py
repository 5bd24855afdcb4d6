"""What a workflow may return, the outbox rows it becomes, the envelope, and the release rule."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pipeline.models import OutboxKind, OutboxStatus
from pipeline.outbound.outbox_sql import envelope
from pipeline.sequencing.rules import Delivery, SequencePolicy, advance
from pipeline.sequencing.state import TopicCursor
from pipeline.workflows.outbox import message_id, outbox_rows
from pipeline.workflows.results import Output, output, parse_output
from pipeline.workflows.route_cursors import releasable, release_limit
from pipeline.workflows.routes import parse_routes

ROUTES = parse_routes(
    """
[[routes]]
name = "relay"
cache = "chat"
topic = "room-*"
workflow = "tasks.examples:uppercase"
ordered = true
publish = { cache = "{cache}", topic = "moderated-{topic}" }

[[routes]]
name = "weather"
cache = "weather"
topic = "obs"
workflow = "tasks.examples:weather"
publish = { cache = "{cache}", topic = "changes" }
cache_set = { cache = "{cache}", key = "latest:{location}", ttl_seconds = 60 }
""",
    Path("routes.toml"),
    resolve=False,
)
EVENT = {"id": 42, "cache": "chat", "topic": "room-1", "text": "hi"}
WEATHER_EVENT = {"id": 7, "cache": "weather", "topic": "obs", "text": "{}"}


def test_results_may_be_none_a_string_or_an_output_dict() -> None:
    assert parse_output(None) is None
    assert parse_output("HELLO") == Output(text="HELLO", value=None)
    parsed = parse_output(output("x", value="v", publish=False, cache="delete", location="paris"))
    assert parsed == Output("x", "v", {"location": "paris"}, publish=False, cache="delete")
    assert parse_output(output("x", count=3)).fields == {"count": "3"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (42, "must return None, a str or pipeline.workflows.output"),
        ({"txt": "typo"}, "unknown key(s) ['txt']"),
        ({"text": 5}, "text must be a str or None"),
        ({"text": "x", "cache": "maybe"}, "cache must be one of"),
        ({"text": "x", "fields": {"a": [1]}}, "fields must map names to str/int/float"),
    ],
)
def test_unusable_results_are_refused_with_the_reason(result: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_output(result)


def test_a_text_result_becomes_one_ordered_publish_row_with_a_stable_message_id() -> None:
    (row,) = outbox_rows(ROUTES.get("relay"), EVENT, parse_output("HI"))
    assert row["kind"] is OutboxKind.TOPIC_PUBLISH
    assert (row["target_cache"], row["target_topic"]) == ("chat", "moderated-room-1")
    assert row["payload"] == {"text": "HI"}
    assert row["message_id"] == message_id(42, "relay") == "42:relay"
    assert row["ordering_key"] == "relay\x1fchat\x1froom-1"
    assert row["status"] is OutboxStatus.PENDING


def test_write_through_adds_a_cache_row_keyed_by_a_result_field() -> None:
    rows = outbox_rows(
        ROUTES.get("weather"),
        WEATHER_EVENT,
        parse_output(output("up", value="rec", location="oslo")),
    )
    assert [r["kind"] for r in rows] == [OutboxKind.TOPIC_PUBLISH, OutboxKind.CACHE_SET]
    cache_row = rows[1]
    assert (cache_row["target_cache"], cache_row["target_key"]) == ("weather", "latest:oslo")
    assert cache_row["payload"] == {"value": "rec", "ttl_seconds": 60}
    assert cache_row["ordering_key"] is None  # the weather route here is not ordered


def test_publish_false_skip_and_delete_shape_the_rows() -> None:
    route = ROUTES.get("weather")
    quiet = outbox_rows(
        route, WEATHER_EVENT, parse_output(output("t", publish=False, location="a"))
    )
    assert [r["kind"] for r in quiet] == [OutboxKind.CACHE_SET]
    skipped = outbox_rows(route, WEATHER_EVENT, parse_output(output("t", cache="skip")))
    assert [r["kind"] for r in skipped] == [OutboxKind.TOPIC_PUBLISH]
    deleted = outbox_rows(
        route, WEATHER_EVENT, parse_output(output(publish=False, cache="delete", location="a"))
    )
    assert [(r["kind"], r["payload"]) for r in deleted] == [(OutboxKind.CACHE_DELETE, {})]
    assert outbox_rows(route, WEATHER_EVENT, None) == []


def test_a_template_field_the_result_lacks_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match="needs field 'location'"):
        outbox_rows(ROUTES.get("weather"), WEATHER_EVENT, parse_output("no fields"))


def test_the_envelope_is_compact_json_carrying_the_id_and_the_text() -> None:
    raw = envelope("42:relay", 'héllo "q"')
    assert json.loads(raw) == {"id": "42:relay", "text": 'héllo "q"'}
    assert " " not in raw.replace("héllo ", "")


def fed(*seqs: int, now_ms: int = 1_000) -> TopicCursor:
    deliveries = [Delivery(i, seq, 500 + i, 500 + i) for i, seq in enumerate(seqs)]
    cursor, _ = advance(TopicCursor(), deliveries, now_ms, SequencePolicy(reorder_window_ms=2_000))
    return cursor


def test_events_are_released_up_to_the_contiguous_watermark_only() -> None:
    state = fed(1, 2, 4, 5)  # 3 is missing and its reorder window is still open
    assert release_limit(state, 1) == 2
    assert [seq for seq in (1, 2, 4, 5) if releasable(state, 1, seq)] == [1, 2]
    assert not releasable(None, 1, 1)


def test_a_gap_declared_lost_stops_holding_later_events_back() -> None:
    cursor = fed(1, 2, 4, 5)
    expired, _ = advance(cursor, [], 10_000, SequencePolicy(reorder_window_ms=2_000))
    assert release_limit(expired, 1) == 5
    assert releasable(expired, 1, 5)


def test_retired_epochs_release_everything_and_unknown_epochs_nothing() -> None:
    state = fed(1, 2, 3)
    assert release_limit(state, 0) is None  # older than every epoch the cursor holds
    assert release_limit(state, 2) == -1  # an epoch the sequencer has not seen
