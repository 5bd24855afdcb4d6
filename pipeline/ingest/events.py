"""Momento webhook bodies: parsing and validation, shared by the receiver and the ingest worker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.errors import MalformedBody, StaleEvent, TimestampOutOfRange
from pipeline.models import EVENT_TIME_MAX_MS, EVENT_TIME_MIN_MS

MAX_NAME_LEN = 255
MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects accepted (Momento's own body is flat).

Without a fixed limit, whether a deep body parses depends on the caller's stack depth: the
receiver could accept one that the worker then fails to parse, an acknowledged event lost.
"""
MAX_EVENT_LAG_MS = 24 * 3600 * 1000
"""How much older than its ``publish_timestamp`` an ``event_timestamp`` may be: one day.

Momento POSTs a webhook once, right after the publish, so the lag is normally milliseconds; a
refused webhook is lost (there is no retry), so the bound only catches values that cannot be
true, and keeps an event's window well inside the retention period, where roll-ups reach it.
"""
_INT_FIELDS = ("topic_sequence_number", "event_timestamp", "publish_timestamp")
_NAME_FIELDS = ("cache", "topic")


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """The Momento fields of one webhook body; extra JSON fields stay in the raw body only."""

    cache: str
    topic: str
    topic_sequence_number: int
    event_timestamp: int
    publish_timestamp: int
    token_id: str
    text: str


def parse_webhook(body: bytes | str) -> WebhookEvent:
    """Decode and validate a webhook body, or raise MalformedBody naming the bad field."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise MalformedBody(f"body is nested deeper than {MAX_JSON_DEPTH} levels") from exc
    if not isinstance(data, dict):
        raise MalformedBody(f"body must be a JSON object, got {type(data).__name__}")
    check_depth(data)
    for name in _NAME_FIELDS:
        value = data.get(name)
        if not isinstance(value, str) or not value or len(value) > MAX_NAME_LEN:
            raise MalformedBody(f"field {name!r} must be a non-empty string of at most 255 chars")
    for name in _INT_FIELDS:
        value = data.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
            raise MalformedBody(f"field {name!r} must be a non-negative integer, got {value!r}")
    token_id = data.get("token_id", "")
    if not isinstance(token_id, str) or len(token_id) > MAX_NAME_LEN:
        raise MalformedBody("field 'token_id' must be a string of at most 255 chars")
    text = data.get("text")
    if not isinstance(text, str):
        raise MalformedBody(f"field 'text' must be a string, got {type(text).__name__}")
    for name, value in (
        ("cache", data["cache"]),
        ("topic", data["topic"]),
        ("token_id", token_id),
        ("text", text),
    ):
        check_storable(name, value)
    return WebhookEvent(
        cache=data["cache"],
        topic=data["topic"],
        topic_sequence_number=data["topic_sequence_number"],
        event_timestamp=data["event_timestamp"],
        publish_timestamp=data["publish_timestamp"],
        token_id=token_id,
        text=text,
    )


def check_timestamps(event: WebhookEvent, now_ms: float, window_ms: float, skew_ms: float) -> None:
    """Raise unless the event's timestamps are believable at ``now_ms``.

    ``publish_timestamp`` must lie within ``window_ms`` before and ``skew_ms`` after now
    (StaleEvent: a replayed or badly delayed request). ``event_timestamp`` must lie within
    MAX_EVENT_LAG_MS before and ``skew_ms`` after the publish, and in EVENT_TIME_MIN_MS ..
    EVENT_TIME_MAX_MS (TimestampOutOfRange).
    """
    age_ms = now_ms - event.publish_timestamp
    if age_ms > window_ms:
        raise StaleEvent(
            f"publish_timestamp is {age_ms / 1000:.1f} s old; the replay window is "
            f"{window_ms / 1000:g} s"
        )
    if -age_ms > skew_ms:
        raise StaleEvent(f"publish_timestamp is {-age_ms / 1000:.1f} s in the future")
    event_ms = event.event_timestamp
    lag_ms = event.publish_timestamp - event_ms
    if not EVENT_TIME_MIN_MS <= event_ms < EVENT_TIME_MAX_MS:
        raise TimestampOutOfRange(
            f"event_timestamp {event_ms} is outside {EVENT_TIME_MIN_MS}..{EVENT_TIME_MAX_MS} "
            "(epoch ms, years 2000..2099)"
        )
    if lag_ms > MAX_EVENT_LAG_MS:
        raise TimestampOutOfRange(
            f"event_timestamp {event_ms} is {lag_ms / 1000:.1f} s before publish_timestamp; "
            f"at most {MAX_EVENT_LAG_MS / 1000:g} s is accepted"
        )
    if -lag_ms > skew_ms:
        raise TimestampOutOfRange(
            f"event_timestamp {event_ms} is {-lag_ms / 1000:.1f} s after publish_timestamp; "
            f"at most {skew_ms / 1000:g} s is accepted"
        )


def check_depth(data: dict[str, Any] | list[Any], limit: int = MAX_JSON_DEPTH) -> None:
    """Raise MalformedBody if arrays and objects nest deeper than ``limit`` (no recursion)."""
    children = data.values() if isinstance(data, dict) else data
    pending = [(value, 2) for value in children if isinstance(value, dict | list)]
    while pending:
        value, depth = pending.pop()
        if depth > limit:
            raise MalformedBody(f"body is nested deeper than {limit} levels")
        children = value.values() if isinstance(value, dict) else value
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def check_storable(name: str, value: str) -> None:
    """Reject what Postgres would refuse: NUL characters, and lone surrogates (legal as JSON
    escapes, not encodable as UTF-8). Acked, such an event would fail its whole batch."""
    if "\x00" in value:
        raise MalformedBody(f"field {name!r} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedBody(f"field {name!r} contains a lone surrogate") from exc


def webhook_key(event: WebhookEvent) -> str:
    """Natural idempotency key of a webhook within its (cache, topic)."""
    return f"t{event.event_timestamp}:{event.topic_sequence_number}"
