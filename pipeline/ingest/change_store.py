"""Store a batch of change records once, apply them per item in sequence order, and write their
routes' outbox rows: all in one transaction.

A record is *applied* only if its sequence number (a big integer) is greater than that of every
record applied before to the same item; ``change_items`` holds that newest number, locked for the
transaction, and a REMOVE leaves its row as a tombstone. So however EventBridge retries reorder
deliveries, an older record never reaches the cache after a newer one, and a MODIFY delivered
after the REMOVE that followed it does not bring the item back. Records that lose are stored
(``applied`` false) and go nowhere.

Records are unique on (source, idempotency key): a redelivered record is stored once, and as its
sequence number is not greater than its item's by then, it is never applied twice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, text

from pipeline.config import Settings
from pipeline.db import Executor, transaction
from pipeline.errors import MalformedBody
from pipeline.ingest.changes import ChangeRecord, parse_changes
from pipeline.ingest.dynamodb_json import dumps
from pipeline.models import DeadLetter
from pipeline.workflows.change_outbox import Planned, plan, write_outbox
from pipeline.workflows.routes import RouteTable

logger = logging.getLogger(__name__)

ChangeItem = Sequence[Any]
"""One receiver request as it travels through the broker: [source, body, received at (ms)]."""
ItemId = tuple[str, str, str]
"""(source, table, item key)."""


@dataclass
class ChangeStoreResult:
    """What one batch did (the fields ``tasks.ingest.store_items`` reports)."""

    new_ids: list[int] = field(default_factory=list)
    duplicates: int = 0
    dead: int = 0
    applied: int = 0
    stale: int = 0
    replayed: bool = False
    outbox: list[Any] = field(default_factory=list)
    """Outbox rows written, to send now (``SEND_COLUMNS``)."""


def parse_items(items: Sequence[ChangeItem]) -> tuple[list[tuple[ChangeRecord, int]], list[Any]]:
    """Records of the batch with their receive times, each once; and poison items with reasons."""
    records: dict[tuple[str, str], tuple[ChangeRecord, int]] = {}
    poison: list[Any] = []
    for item in items:
        try:
            source, body, received_ms = str(item[0]), item[1], int(item[2])
            parsed = parse_changes(body, source, checked=True)
        except (MalformedBody, TypeError, ValueError, IndexError) as exc:
            poison.append((item, str(exc)))
            continue
        for record in parsed:
            records.setdefault((record.source, record.idempotency_key), (record, received_ms))
    return list(records.values()), poison


_LOCK_ITEMS = text(
    "INSERT INTO change_items (source, table_name, item_key, seq, deleted, record_id) "
    "SELECT source, table_name, item_key, -1, false, 0 "
    "FROM json_to_recordset(CAST(:items AS json)) AS i(source text, table_name text, item_key text)"
    " ORDER BY source, table_name, item_key "
    "ON CONFLICT (source, table_name, item_key) DO UPDATE SET seq = change_items.seq "
    "RETURNING source, table_name, item_key, seq"
)
"""Lock every item of the batch (creating the new ones) in one order, and read its newest seq."""

_RECORD_COLUMNS = (
    "source", "table_name", "item_key", "op", "event_name", "seq", "keys", "new_image",
    "old_image", "idempotency_key", "applied", "changed_at", "received_at",
)  # fmt: skip
_INSERT_RECORDS = text(
    f"INSERT INTO change_records ({', '.join(_RECORD_COLUMNS)}) "
    f"SELECT {', '.join(_RECORD_COLUMNS)} FROM json_to_recordset(CAST(:rows AS json)) AS r("
    "source text, table_name text, item_key text, op text, event_name text, seq numeric, "
    "keys jsonb, new_image jsonb, old_image jsonb, idempotency_key text, applied boolean, "
    "changed_at timestamptz, received_at timestamptz) "
    "ON CONFLICT ON CONSTRAINT uq_change_records_source_idempotency_key DO NOTHING "
    "RETURNING id, source, idempotency_key"
)
_ADVANCE_ITEMS = text(
    "UPDATE change_items c SET seq = u.seq, deleted = u.deleted, record_id = u.record_id, "
    "updated_at = now() FROM json_to_recordset(CAST(:items AS json)) AS u(source text, "
    "table_name text, item_key text, seq numeric, deleted boolean, record_id bigint) "
    "WHERE c.source = u.source AND c.table_name = u.table_name AND c.item_key = u.item_key"
)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def _item_id(record: ChangeRecord) -> ItemId:
    return (record.source, record.table, record.item_key)


def store_changes(
    conn: Executor,
    records: Sequence[tuple[ChangeRecord, int]],
    plans: dict[tuple[str, str], list[Planned]],
) -> ChangeStoreResult:
    """Store, apply and route ``records`` (each once, with its receive time) through ``conn``.

    ``plans``: each record's outbox rows by (source, idempotency key), planned beforehand.
    """
    result = ChangeStoreResult()
    if not records:
        return result
    items = sorted({_item_id(record) for record, _ in records})
    locked = conn.execute(
        _LOCK_ITEMS,
        {"items": dumps([{"source": s, "table_name": t, "item_key": k} for s, t, k in items])},
    ).all()
    newest = {(row.source, row.table_name, row.item_key): int(row.seq) for row in locked}
    by_item: dict[ItemId, list[ChangeRecord]] = defaultdict(list)
    for record, _ in records:
        by_item[_item_id(record)].append(record)
    applied: set[tuple[str, str]] = set()
    for item, found in by_item.items():
        seq = newest[item]
        for record in sorted(found, key=lambda r: r.seq):  # stable: equal numbers keep order
            if record.seq > seq:
                applied.add((record.source, record.idempotency_key))
                seq = record.seq
    rows = [
        {
            "source": record.source,
            "table_name": record.table,
            "item_key": record.item_key,
            "op": record.op,
            "event_name": record.event_name,
            "seq": record.seq,
            "keys": record.keys,
            "new_image": record.new,
            "old_image": record.old,
            "idempotency_key": record.idempotency_key,
            "applied": (record.source, record.idempotency_key) in applied,
            "changed_at": _iso(record.created_ms),
            "received_at": _iso(received_ms),
        }
        for record, received_ms in records
    ]
    inserted = conn.execute(_INSERT_RECORDS, {"rows": dumps(rows)}).all()
    ids = {(row.source, row.idempotency_key): int(row.id) for row in inserted}
    result.new_ids = sorted(ids.values())
    result.duplicates = len(records) - len(inserted)
    # Apply in (item, seq) order: outbox ids then follow sequence numbers within each item.
    winners: list[tuple[int, ChangeRecord]] = []
    for item in items:
        for record in sorted(by_item[item], key=lambda r: r.seq):
            record_id = ids.get((record.source, record.idempotency_key))
            if record_id is not None and (record.source, record.idempotency_key) in applied:
                winners.append((record_id, record))
    result.applied = len(winners)
    result.stale = len(inserted) - len(winners)
    final = {_item_id(record): (record_id, record) for record_id, record in winners}
    if final:
        advance = [
            {
                "source": s,
                "table_name": t,
                "item_key": k,
                "seq": record.seq,
                "deleted": record.op == "delete",
                "record_id": record_id,
            }
            for (s, t, k), (record_id, record) in final.items()
        ]
        conn.execute(_ADVANCE_ITEMS, {"items": dumps(advance)})
    routed = [
        (record_id, plans.get((record.source, record.idempotency_key), []))
        for record_id, record in winners
    ]
    result.outbox, failed = write_outbox(conn, routed)  # type: ignore[arg-type]
    for payload in failed:
        conn.execute(
            insert(DeadLetter).values(
                kind="workflow", reason=payload["error"][:2000], payload=payload
            )
        )
    return result


def store_change_batch(
    settings: Settings, items: Sequence[ChangeItem], routes: RouteTable
) -> ChangeStoreResult:
    """Parse a receiver batch, plan its routes (workflows run here, outside the transaction),
    then store and apply it in one transaction; poison items are dead-lettered."""
    records, poison = parse_items(items)
    plans = {
        (record.source, record.idempotency_key): plan(routes, record)
        for record, _ in records
        if routes.changes
    }
    with transaction(settings) as conn:
        for item, reason in poison:
            kept = list(item) if isinstance(item, list | tuple) else repr(item)
            conn.execute(
                insert(DeadLetter).values(
                    kind="changes", reason=reason[:2000], payload={"item": kept}
                )
            )
        result = store_changes(conn, records, plans)
    result.dead = len(poison)
    return result
