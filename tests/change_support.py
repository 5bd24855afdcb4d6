"""Change records as producers send them: DynamoDB stream records (as an EventBridge pipe
delivers them to an API destination) and the plain shape, for tests at every level."""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

TABLE_ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/{table}/stream/2026-12-01T00:00:00.000"
API_KEY = "test-change-key"


def marshal(value: Any) -> dict[str, Any]:
    """A plain value as DynamoDB JSON (the inverse of ``unmarshal``; lists as L, bytes as B)."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | Decimal):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bytes):
        return {"B": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {"M": {k: marshal(v) for k, v in value.items()}}
    if isinstance(value, list):
        return {"L": [marshal(v) for v in value]}
    raise TypeError(f"cannot marshal {type(value).__name__}")


def marshal_item(item: dict[str, Any]) -> dict[str, Any]:
    """A plain dict as a DynamoDB JSON map of attributes."""
    return {name: marshal(value) for name, value in item.items()}


def stream_record(
    event_name: str,
    keys: dict[str, Any],
    seq: int,
    *,
    new: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
    table: str = "user",
    event_id: str | None = None,
) -> dict[str, Any]:
    """One DynamoDB stream record (NEW_AND_OLD_IMAGES) as EventBridge Pipes passes it on."""
    dynamodb: dict[str, Any] = {
        "ApproximateCreationDateTime": 1_796_000_000,
        "Keys": marshal_item(keys),
        "SequenceNumber": str(seq),
        "SizeBytes": 64,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if new is not None:
        dynamodb["NewImage"] = marshal_item(new)
    if old is not None:
        dynamodb["OldImage"] = marshal_item(old)
    return {
        "eventID": event_id or f"evt-{table}-{seq}",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "eu-west-1",
        "eventSourceARN": TABLE_ARN.format(table=table),
        "dynamodb": dynamodb,
    }


def key_headers(key: str = API_KEY) -> dict[str, str]:
    """Headers of an API destination whose connection sends ``key`` in x-api-key."""
    return {"content-type": "application/json", "x-api-key": key}
