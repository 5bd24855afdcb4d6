"""Momento webhook bodies: parsing and validation, shared by the receiver and the ingest worker."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.errors import MalformedBody

MAX_NAME_LEN = 255
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
    if not isinstance(data, dict):
        raise MalformedBody(f"body must be a JSON object, got {type(data).__name__}")
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
        _check_storable(name, value)
    return WebhookEvent(
        cache=data["cache"],
        topic=data["topic"],
        topic_sequence_number=data["topic_sequence_number"],
        event_timestamp=data["event_timestamp"],
        publish_timestamp=data["publish_timestamp"],
        token_id=token_id,
        text=text,
    )


def _check_storable(name: str, value: str) -> None:
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


def subscription_key(page: int, sequence_number: int) -> str:
    """Natural idempotency key of a subscription item within its (cache, topic)."""
    return f"p{page}:{sequence_number}"
