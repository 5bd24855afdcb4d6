"""Subscription items as they travel through the broker, and the event rows they become.

An item is ``[cache, topic, sequence page, sequence number, value, binary, received ms]``: the
value is the text, or the bytes in base64 when ``binary``. Its natural key is its place in the
topic, ``p{page}:{number}``: a message received twice (a resume replays from the last durable
position) is stored once. Subscription items carry no publish time, so the receive time stands
in for ``event_timestamp`` (delivery to a subscriber is immediate; the webhook path's clock
rules for resets are not needed where the page names the numbering).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pipeline.models import EVENT_TIME_MAX_MS, EVENT_TIME_MIN_MS, EventSource

Item = list[Any]


def encode_item(
    cache: str, topic: str, page: int, seq: int, value: str | bytes, received_ms: int
) -> Item:
    """The broker form of one received subscription message."""
    if isinstance(value, bytes):
        return [cache, topic, page, seq, base64.b64encode(value).decode(), True, received_ms]
    return [cache, topic, page, seq, value, False, received_ms]


def subscription_key(page: int, seq: int) -> str:
    """Natural idempotency key of a subscription item within its (cache, topic)."""
    return f"p{page}:{seq}"


def subscription_rows(
    items: Sequence[Sequence[Any]],
) -> tuple[list[dict[str, Any]], list[tuple[Any, str]]]:
    """Event rows of listener items; items that are not well formed come back as poison."""
    rows: list[dict[str, Any]] = []
    poison: list[tuple[Any, str]] = []
    for item in items:
        try:
            row = _row(item)
        except (TypeError, ValueError, IndexError, OverflowError) as exc:
            poison.append((item, f"bad subscription item: {exc}"))
            continue
        rows.append(row)
    return rows, poison


def _row(item: Sequence[Any]) -> dict[str, Any]:
    cache, topic, page, seq, value, binary, received_ms = item
    if not isinstance(cache, str) or not isinstance(topic, str) or not cache or not topic:
        raise ValueError("cache and topic must be non-empty text")
    if not isinstance(value, str) or not isinstance(binary, bool):
        raise TypeError("value must be text and binary a boolean")
    page, seq, received_ms = int(page), int(seq), int(received_ms)
    if page < 0 or seq < 0 or not EVENT_TIME_MIN_MS <= received_ms < EVENT_TIME_MAX_MS:
        raise ValueError(f"page {page}, number {seq} or receive time {received_ms} out of range")
    if "\x00" in value:
        raise ValueError("text holds a NUL character")
    return {
        "cache": cache,
        "topic": topic,
        "topic_sequence_number": seq,
        "sequence_page": page or None,
        "event_timestamp": received_ms,
        "publish_timestamp": None,
        "token_id": "",
        "text": value,
        "raw_body": None,
        "received_at": datetime.fromtimestamp(received_ms / 1000, tz=UTC),
        "source": EventSource.SUBSCRIPTION,
        "idempotency_key": subscription_key(page, seq),
        "epoch": None,
        "arrival": None,
    }
