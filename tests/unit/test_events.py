"""Webhook body parsing: Momento's fields with exact types; extra fields tolerated."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.errors import MalformedBody
from pipeline.events import parse_webhook, webhook_key


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
