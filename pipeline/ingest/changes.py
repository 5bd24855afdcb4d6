"""Change records (``POST /changes/{source}``): parsing and validation, shared by the receiver
and the worker that stores them.

Two shapes are accepted, one record or a JSON array of them:

- a DynamoDB stream record as an EventBridge pipe delivers it to an API destination
  (``eventID``, ``eventName`` INSERT/MODIFY/REMOVE, ``eventSourceARN``, ``dynamodb.Keys``,
  ``NewImage``, ``OldImage``, ``SequenceNumber``, ``ApproximateCreationDateTime``), images in
  DynamoDB JSON;
- a plain record from any other change-data-capture producer:
  ``{"table", "keys", "op": "upsert"|"delete", "new", "old", "seq"}``, values in plain JSON.

Either way the record becomes a ``ChangeRecord`` with plain JSON values (numbers exact, as
``Decimal``), its item's identity (``item_key``: the keys as canonical JSON), its sequence number
as a big integer, and a natural idempotency key within its source: the DynamoDB ``eventID``, or
(table, keys, seq) for the plain shape. A bad record is a MalformedBody naming the record and
field, so the whole request is refused and the producer retries nothing that cannot succeed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from pipeline.errors import MalformedBody
from pipeline.ingest.dynamodb_json import DynamoJsonError, dumps, loads, unmarshal_item
from pipeline.ingest.events import check_depth, check_storable

Op = Literal["upsert", "delete"]
SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
TABLE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")
ARN_TABLE_RE = re.compile(r"^arn:[^:]+:dynamodb:[^:]*:[^:]*:table/([A-Za-z0-9_.-]{1,255})(/|$)")
EVENT_NAMES: dict[str, Op] = {"INSERT": "upsert", "MODIFY": "upsert", "REMOVE": "delete"}
MAX_SEQ_DIGITS = 40
"""DynamoDB sequence numbers are decimal strings of up to 40 digits (21 in practice)."""
MAX_EVENT_ID_LEN = 128
MAX_ITEM_KEY_LEN = 4096
"""Keys as canonical JSON: DynamoDB's own limit is 2048 + 1024 bytes of partition and sort key."""
MAX_RECORDS = 1000
MAX_DEPTH = 2 * 32 + 8
"""DynamoDB documents nest 32 levels, each a ``{"M": ...}`` wrapper deep in DynamoDB JSON, inside
the record's own few levels."""


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One change to one item, its values plain JSON."""

    source: str
    table: str
    op: Op
    keys: dict[str, Any]
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    seq: int
    idempotency_key: str
    item_key: str
    """The item's identity within (source, table): its keys as canonical JSON."""
    event_name: str | None = None
    """INSERT, MODIFY or REMOVE for a DynamoDB record; None for the plain shape."""
    event_id: str | None = None
    created_ms: int | None = None
    """When the change was made (DynamoDB's ApproximateCreationDateTime), epoch ms."""

    def view(self) -> dict[str, Any]:
        """The record as a route's workflow and the change topic see it (plain JSON values)."""
        return {
            "source": self.source,
            "table": self.table,
            "op": self.op,
            "event": self.event_name,
            "keys": self.keys,
            "new": self.new,
            "old": self.old,
            "seq": str(self.seq),
        }


def item_key(keys: dict[str, Any]) -> str:
    """Canonical JSON of an item's keys: the same item always gives the same text."""
    return dumps(keys, sort_keys=True)


def check_source(source: str) -> str:
    """The ``{source}`` of the path: a name like ``dynamodb`` or ``orders-db``."""
    if not SOURCE_RE.match(source):
        raise MalformedBody(f"source {source!r} must match {SOURCE_RE.pattern}")
    return source


def parse_changes(body: bytes | str, source: str, *, checked: bool = False) -> list[ChangeRecord]:
    """Decode and validate a body of one record or an array of them, or raise MalformedBody.

    ``checked``: the receiver accepted this body, so its nesting and strings passed; the worker
    skips those two walks over every value (a third of its parsing time) and parses the rest.
    """
    check_source(source)
    try:
        data = loads(body)
    except RecursionError as exc:
        raise MalformedBody(f"body is nested deeper than {MAX_DEPTH} levels") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"body is not valid JSON: {exc}") from exc
    items = data if isinstance(data, list) else [data]
    if not items:
        raise MalformedBody("body is an empty array: send one record or more")
    if len(items) > MAX_RECORDS:
        raise MalformedBody(f"{len(items)} records in one body; at most {MAX_RECORDS}")
    if not checked:
        check_depth(items, MAX_DEPTH)
    records = []
    for index, item in enumerate(items):
        where = f"record[{index}]" if isinstance(data, list) else "record"
        try:
            records.append(parse_record(item, source, checked=checked))
        except (MalformedBody, DynamoJsonError) as exc:
            raise MalformedBody(f"{where}: {exc}") from exc
    return records


def parse_record(item: Any, source: str, *, checked: bool = False) -> ChangeRecord:
    """One record of either shape (``checked``: see ``parse_changes``)."""
    if not isinstance(item, dict):
        raise MalformedBody(f"must be a JSON object, got {type(item).__name__}")
    if "dynamodb" in item or "eventName" in item:
        record = _dynamodb_record(item, source)
    else:
        record = _plain_record(item, source)
    if not checked:
        _check_values(record)
    return record


def _dynamodb_record(item: dict[str, Any], source: str) -> ChangeRecord:
    event_name = item.get("eventName")
    if event_name not in EVENT_NAMES:
        raise MalformedBody(f"eventName must be one of {sorted(EVENT_NAMES)}, got {event_name!r}")
    event_id = item.get("eventID")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_EVENT_ID_LEN:
        raise MalformedBody(f"eventID must be a string of 1..{MAX_EVENT_ID_LEN} characters")
    arn = item.get("eventSourceARN")
    found = ARN_TABLE_RE.match(arn) if isinstance(arn, str) else None
    if found is None:
        raise MalformedBody(
            "eventSourceARN must be a DynamoDB stream ARN "
            f"(arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/...), got {arn!r}"
        )
    stream = item.get("dynamodb")
    if not isinstance(stream, dict):
        raise MalformedBody("dynamodb must be an object holding Keys and SequenceNumber")
    keys = unmarshal_item(stream.get("Keys"), "dynamodb.Keys")
    canonical = _nonempty_keys(keys, "dynamodb.Keys")
    new = _image(stream, "NewImage")
    old = _image(stream, "OldImage")
    return ChangeRecord(
        source=source,
        table=found.group(1),
        op=EVENT_NAMES[event_name],
        keys=keys,
        new=new,
        old=old,
        seq=_sequence(stream.get("SequenceNumber"), "dynamodb.SequenceNumber"),
        idempotency_key=f"ddb:{event_id}",
        item_key=canonical,
        event_name=event_name,
        event_id=event_id,
        created_ms=_created_ms(stream.get("ApproximateCreationDateTime")),
    )


def _image(stream: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = stream.get(name)
    return None if value is None else unmarshal_item(value, f"dynamodb.{name}")


def _plain_record(item: dict[str, Any], source: str) -> ChangeRecord:
    unknown = sorted(set(item) - {"table", "keys", "op", "new", "old", "seq"})
    if unknown:
        raise MalformedBody(
            f"unknown field(s) {unknown}; a plain record has table, keys, op, new, old, seq "
            "(a DynamoDB stream record has eventName and dynamodb)"
        )
    table = item.get("table")
    if not isinstance(table, str) or not TABLE_RE.match(table):
        raise MalformedBody(f"table must match {TABLE_RE.pattern}, got {table!r}")
    op = item.get("op")
    if op not in ("upsert", "delete"):
        raise MalformedBody(f"op must be 'upsert' or 'delete', got {op!r}")
    keys = item.get("keys")
    if not isinstance(keys, dict):
        raise MalformedBody("keys must be an object of the item's key attributes")
    images = []
    for name in ("new", "old"):
        value = item.get(name)
        if value is not None and not isinstance(value, dict):
            raise MalformedBody(f"{name} must be an object or null, got {type(value).__name__}")
        images.append(value)
    seq = _sequence(item.get("seq"), "seq")
    canonical = _nonempty_keys(keys, "keys")
    digest = hashlib.sha256(f"{table}\0{canonical}\0{seq}".encode()).hexdigest()
    return ChangeRecord(
        source=source,
        table=table,
        op=op,
        keys=keys,
        new=images[0],
        old=images[1],
        seq=seq,
        idempotency_key=f"seq:{digest}",
        item_key=canonical,
    )


def _nonempty_keys(keys: dict[str, Any], where: str) -> str:
    """The keys' canonical JSON, once they are checked to name an item."""
    if not keys:
        raise MalformedBody(f"{where} must name at least one key attribute")
    canonical = item_key(keys)
    if len(canonical) > MAX_ITEM_KEY_LEN:
        raise MalformedBody(f"{where} is longer than {MAX_ITEM_KEY_LEN} characters as JSON")
    return canonical


def _sequence(value: Any, where: str) -> int:
    """A sequence number: digits (DynamoDB's strings) or a non-negative JSON integer."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        text = str(value)
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        text = value
    else:
        raise MalformedBody(
            f"{where} must be a non-negative integer or digit string, got {value!r}"
        )
    if len(text) > MAX_SEQ_DIGITS:
        raise MalformedBody(f"{where} has more than {MAX_SEQ_DIGITS} digits")
    return int(text)


def _created_ms(value: Any) -> int | None:
    """ApproximateCreationDateTime: epoch seconds (DynamoDB Streams) or ms (some producers)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    number = float(value)
    if not 0 < number < 1e14:
        return None
    return int(number if number > 1e11 else number * 1000)


def _check_values(record: ChangeRecord) -> None:
    """Refuse strings Postgres cannot store (NUL, lone surrogates) anywhere in the record."""
    pending: list[tuple[str, Any]] = [
        ("keys", record.keys), ("new", record.new), ("old", record.old), ("table", record.table)
    ]
    while pending:
        where, value = pending.pop()
        if isinstance(value, str):
            check_storable(where, value)
        elif isinstance(value, dict):
            for name, child in value.items():
                check_storable(f"{where} attribute name", name)
                pending.append((f"{where}.{name}", child))
        elif isinstance(value, list):
            pending.extend((f"{where}[{i}]", child) for i, child in enumerate(value))
