"""Change records into the outbox: the cache writes and topic messages their routes ask for.

Each applied record (newer than everything before it for its item, see
``pipeline.ingest.change_store``) gives, per matching ``changes`` route,

- ``cache_set``: a set of the item's new image as JSON (exact numbers), or a delete when the
  record removes the item (or carries no new image: a stale value must not stay cached);
- ``publish``: ``{"op", "event", "source", "table", "keys", "new", "old", "seq"}`` on the topic,
  in the outbox's ``{"id", "text"}`` envelope.

Rows carry an ordering key per (route, item): the publisher sends one item's rows one at a time
in id order, and ids follow the records' sequence numbers, so the cache ends at the newest image
whatever order the records were delivered in. A route's workflow (a Celery task) may transform
the record first: it is given ``ChangeRecord.view()`` and returns what any workflow returns
(``pipeline.workflows.results``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import simplejson
from sqlalchemy import Connection, text

from pipeline.models import OutboxKind, OutboxStatus
from pipeline.outbound.outbox_sql import SEND_COLUMNS
from pipeline.workflows.change_routes import ChangeRoute
from pipeline.workflows.results import Output, parse_output, resolve_workflow
from pipeline.workflows.routes import RouteTable
from pipeline.workflows.templates import render_flat

logger = logging.getLogger(__name__)


class ChangeRecord(Protocol):
    """What routing needs of a change record (``pipeline.ingest.changes.ChangeRecord``)."""

    @property
    def source(self) -> str: ...
    @property
    def table(self) -> str: ...
    @property
    def op(self) -> str: ...
    @property
    def keys(self) -> dict[str, Any]: ...
    @property
    def new(self) -> dict[str, Any] | None: ...
    @property
    def old(self) -> dict[str, Any] | None: ...
    @property
    def item_key(self) -> str: ...
    def view(self) -> dict[str, Any]: ...


def dumps(value: Any) -> str:
    """Compact JSON with Decimals written exactly (record images keep every digit)."""
    return simplejson.dumps(value, use_decimal=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Planned:
    """What one route does with one record: its outbox rows (without the record's id yet),
    or why it cannot (a workflow that failed, a template naming a field the record lacks)."""

    route: str
    rows: list[dict[str, Any]]
    error: str | None = None


def template_values(record: ChangeRecord) -> dict[str, str]:
    """The fields a change route's templates may name: source, table, op, keys.*, new.*, old.*."""
    values = {"source": record.source, "table": record.table, "op": record.op}
    for prefix, image in (("keys", record.keys), ("new", record.new), ("old", record.old)):
        for name, value in (image or {}).items():
            if isinstance(value, str):
                values[f"{prefix}.{name}"] = value
            elif isinstance(value, bool):
                values[f"{prefix}.{name}"] = "true" if value else "false"
            elif isinstance(value, int | Decimal):
                values[f"{prefix}.{name}"] = str(value)
    return values


def ordering_key(route: str, record: ChangeRecord) -> str:
    """One item's rows of one route are sent in order."""
    return f"change:{route}:{record.source}:{record.table}:{record.item_key}"


def plan(routes: RouteTable, record: ChangeRecord) -> list[Planned]:
    """The outbox rows every matching route asks for (workflows run here)."""
    return [_plan_route(route, record) for route in routes.changes_matching(record.source,
                                                                            record.table)]


def _plan_route(route: ChangeRoute, record: ChangeRecord) -> Planned:
    view = record.view()
    try:
        result: Output | None = Output(text=None, value=None)
        if route.workflow is not None:
            result = parse_output(resolve_workflow(route.workflow).call(view))
        if result is None:
            return Planned(route.name, [])
        return Planned(route.name, _rows(route, record, view, result))
    except Exception as exc:  # a workflow's failure or a bad template: dead-lettered, not retried
        logger.warning("change route failed route=%s error=%r", route.name, exc)
        return Planned(route.name, [], f"{type(exc).__name__}: {exc}")


def _rows(
    route: ChangeRoute, record: ChangeRecord, view: dict[str, Any], result: Output
) -> list[dict[str, Any]]:
    values = template_values(record) | dict(result.fields)
    base: dict[str, Any] = {
        "route": route.name,
        "ordering_key": ordering_key(route.name, record),
        "status": OutboxStatus.PENDING.value,
    }
    rows = []
    if route.cache_set is not None and result.cache != "skip":
        target = route.cache_set
        value = result.cache_value
        if value is None and record.op == "upsert" and record.new is not None:
            value = dumps(record.new)
        delete = result.cache == "delete" or value is None
        kind = OutboxKind.CACHE_DELETE if delete else OutboxKind.CACHE_SET
        rows.append(
            base
            | {
                "kind": kind.value,
                "target_cache": render_flat(target.cache, values),
                "target_topic": None,
                "target_key": render_flat(target.key, values),
                "payload": {} if delete else {"value": value, "ttl_seconds": target.ttl_seconds},
            }
        )
    if route.publish is not None and result.publish:
        message = result.text if result.text is not None else dumps(view)
        rows.append(
            base
            | {
                "kind": OutboxKind.TOPIC_PUBLISH.value,
                "target_cache": render_flat(route.publish.cache, values),
                "target_topic": render_flat(route.publish.topic, values),
                "target_key": None,
                "payload": {"text": message},
            }
        )
    return rows


_COLUMNS = (
    "route", "event_id", "kind", "target_cache", "target_topic", "target_key", "payload",
    "message_id", "ordering_key", "status",
)  # fmt: skip
_INSERT = text(
    f"INSERT INTO outbox ({', '.join(_COLUMNS)}) "
    f"SELECT {', '.join(_COLUMNS)} FROM json_to_recordset(CAST(:rows AS json)) AS r("
    "route text, event_id bigint, kind outbox_kind, target_cache text, target_topic text, "
    "target_key text, payload jsonb, message_id text, ordering_key text, status outbox_status, "
    "n int) "
    "ORDER BY r.n "
    "ON CONFLICT ON CONSTRAINT uq_outbox_route_event_id_kind DO NOTHING "
    f"RETURNING {', '.join(column.name for column in SEND_COLUMNS)}"
)


def write_outbox(
    conn: Connection, applied: Sequence[tuple[int, list[Planned]]]
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Insert the rows of applied records, given as (record id, plans) in the order they must be
    sent; return (the rows inserted, the failed plans to dead-letter)."""
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for record_id, plans in applied:
        for planned in plans:
            if planned.error is not None:
                failed.append({"route": planned.route, "event_id": record_id,
                               "kind": "change", "error": planned.error})  # fmt: skip
            for row in planned.rows:
                message_id = f"{record_id}:{planned.route}"
                if row["kind"] != OutboxKind.TOPIC_PUBLISH.value:
                    message_id = f"{message_id}:{row['kind']}"
                rows.append(row | {"event_id": record_id, "message_id": message_id,
                                   "n": len(rows)})  # fmt: skip
    if not rows:
        return [], failed
    inserted = conn.execute(_INSERT, {"rows": dumps(rows)}).all()
    return list(inserted), failed
