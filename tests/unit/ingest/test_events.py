"""Webhook body parsing: exact types, extra fields tolerated, nesting and timestamps bounded."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.errors import MalformedBody, StaleEvent, TimestampOutOfRange
from pipeline.ingest.events import (
    EVENT_TIME_MAX_MS,
    EVENT_TIME_MIN_MS,
    MAX_JSON_DEPTH,
    WebhookEvent,
    check_timestamps,
    parse_webhook,
    webhook_key,
)


def body(**changes: Any) -> bytes:
    data: dict[str, Any] = {
        "cache": "chat",
        "topic": "room-1",
        "event_timestamp": 1_700_000_000_000,
        "publish_timestamp": 1_700_000_000_005,
        "topic_sequence_number": 7,
        "token_id": "",
        "text": "hello",
    }
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def test_valid_body_parses_and_extra_fields_are_ignored() -> None:
    event = parse_webhook(body(extra={"nested": True}))
    assert (event.cache, event.topic, event.topic_sequence_number, event.text) == (
        "chat",
        "room-1",
        7,
        "hello",
    )
    assert webhook_key(event) == "t1700000000000:7"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        (body(cache=""), "'cache'"),
        (body(topic=5), "'topic'"),
        (body(topic_sequence_number="7"), "'topic_sequence_number'"),
        (body(topic_sequence_number=True), "'topic_sequence_number'"),
        (body(event_timestamp=-1), "'event_timestamp'"),
        (body(publish_timestamp=1.5), "'publish_timestamp'"),
        (body(publish_timestamp=...), "'publish_timestamp'"),
        (body(text=None), "'text'"),
        (body(text="a\x00b"), "NUL"),
        (body(token_id=3), "'token_id'"),
        (body(cache="c" * 256), "'cache'"),
    ],
)
def test_bad_body_is_rejected_naming_the_field(raw: bytes, fragment: str) -> None:
    with pytest.raises(MalformedBody, match=fragment):
        parse_webhook(raw)


def test_missing_token_id_defaults_to_empty() -> None:
    assert parse_webhook(body(token_id=...)).token_id == ""


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,
        b'{"a":' * 100_000,
        body(extra=nested(MAX_JSON_DEPTH)),  # one level below the body object: too deep
    ],
)
def test_too_deeply_nested_body_is_malformed_not_a_recursion_error(raw: bytes) -> None:
    with pytest.raises(MalformedBody, match="nested deeper than 32 levels"):
        parse_webhook(raw)


def test_body_nested_exactly_to_the_limit_parses() -> None:
    assert parse_webhook(body(extra=nested(MAX_JSON_DEPTH - 1))).text == "hello"


NOW_MS = 1_700_000_000_000
WINDOW_MS, SKEW_MS = 60_000.0, 30_000.0
DAY_MS = 86_400_000


def event(event_ms: int, publish_ms: int = NOW_MS) -> WebhookEvent:
    return parse_webhook(body(event_timestamp=event_ms, publish_timestamp=publish_ms))


@pytest.mark.parametrize(
    "event_ms",
    [
        NOW_MS,
        NOW_MS - DAY_MS,  # the oldest accepted, relative to the publish
        NOW_MS + 30_000,  # the latest: publish + future skew
    ],
)
def test_event_timestamp_within_its_bounds_is_accepted(event_ms: int) -> None:
    check_timestamps(event(event_ms), NOW_MS, WINDOW_MS, SKEW_MS)


@pytest.mark.parametrize(
    ("event_ms", "fragment"),
    [
        (1_352_408_701_009_006_080, "outside 946684800000..4102444800000"),  # nanoseconds
        (NOW_MS * 1000, "outside"),  # microseconds
        (NOW_MS // 1000, "outside"),  # seconds
        (0, "outside"),
        (EVENT_TIME_MIN_MS - 1, "outside"),
        (EVENT_TIME_MAX_MS, "outside"),
        (NOW_MS - DAY_MS - 1, "86400.0 s before publish_timestamp"),
        (NOW_MS + 30_001, "30.0 s after publish_timestamp"),
    ],
)
def test_event_timestamp_out_of_its_bounds_is_rejected_with_its_own_code(
    event_ms: int, fragment: str
) -> None:
    with pytest.raises(TimestampOutOfRange, match=fragment) as raised:
        check_timestamps(event(event_ms), NOW_MS, WINDOW_MS, SKEW_MS)
    assert (raised.value.code, raised.value.status_code) == ("timestamp_out_of_range", 400)


@pytest.mark.parametrize(
    ("publish_ms", "fragment"),
    [(NOW_MS - 60_001, "60.0 s old"), (NOW_MS + 30_001, "30.0 s in the future")],
)
def test_stale_publish_timestamp_is_reported_before_the_event_timestamp(
    publish_ms: int, fragment: str
) -> None:
    with pytest.raises(StaleEvent, match=fragment):
        check_timestamps(event(0, publish_ms), NOW_MS, WINDOW_MS, SKEW_MS)
