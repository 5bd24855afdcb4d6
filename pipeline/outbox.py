"""The transactional outbox: a workflow's result becomes rows written with the result itself.

Rows are unique on (route, event_id, kind), so a workflow that runs twice (a redelivered task, a
re-dispatched canvas) adds nothing. A replay may revive a *dead* row with its new result; a sent
or pending row is never touched again. ``pipeline.publisher`` sends the pending rows.

Outbound topic messages are a JSON envelope ``{"id": "<event id>:<route>", "text": "..."}``: the
id is stable across retries and replays, so a consumer can drop the one duplicate a crash between
sending and marking a row sent may cause.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from pipeline.models import DeadLetter, OutboxKind, OutboxMessage, OutboxStatus
from pipeline.routes import Route, render
from pipeline.workflows import Output


def message_id(event_id: int, route: str) -> str:
    """The stable id of the message a route publishes for an event."""
    return f"{event_id}:{route}"


def envelope(message_id: str, text: str) -> str:
    """The outbound topic message: compact JSON with the id consumers dedupe on."""
    return json.dumps({"id": message_id, "text": text}, separators=(",", ":"), ensure_ascii=False)


def ordering_key(route: Route, cache: str, topic: str) -> str | None:
    """Rows of an ordered route are sent in order per (route, inbound cache, inbound topic)."""
    return f"{route.name}\x1f{cache}\x1f{topic}" if route.ordered else None


def outbox_rows(route: Route, event: dict[str, Any], result: Output | None) -> list[dict[str, Any]]:
    """The rows a result asks for; ValueError if a template needs a field the result lacks."""
    if result is None:
        return []
    values = {**result.fields, "cache": event["cache"], "topic": event["topic"]}
    base = {
        "route": route.name,
        "event_id": event["id"],
        "ordering_key": ordering_key(route, event["cache"], event["topic"]),
        "status": OutboxStatus.PENDING,
    }
    rows: list[dict[str, Any]] = []
    mid = message_id(event["id"], route.name)
    if route.publish is not None and result.publish and result.text is not None:
        rows.append(
            base
            | {
                "kind": OutboxKind.TOPIC_PUBLISH,
                "target_cache": render(route.publish.cache, values),
                "target_topic": render(route.publish.topic, values),
                "target_key": None,
                "payload": {"text": result.text},
                "message_id": mid,
            }
        )
    target = route.cache_set
    if target is not None and result.cache != "skip":
        delete = result.cache == "delete"
        if delete or result.cache_value is not None:
            kind = OutboxKind.CACHE_DELETE if delete else OutboxKind.CACHE_SET
            payload = (
                {} if delete else {"value": result.cache_value, "ttl_seconds": target.ttl_seconds}
            )
            rows.append(
                base
                | {
                    "kind": kind,
                    "target_cache": render(target.cache, values),
                    "target_topic": None,
                    "target_key": render(target.key, values),
                    "payload": payload,
                    "message_id": f"{mid}:{kind.value}",
                }
            )
    return rows


def write_rows(
    conn: Connection, route: str, event_id: int, rows: list[dict[str, Any]], *, revive: bool = False
) -> list[int]:
    """Insert rows (once per route, event and kind); return the ids of the event's pending rows.

    ``revive`` (replays) puts a dead row back to pending with the new result.
    """
    if rows:
        stmt = pg_insert(OutboxMessage).values(rows)
        if revive:
            excluded = stmt.excluded
            stmt = stmt.on_conflict_do_update(
                constraint="uq_outbox_route_event_id_kind",
                set_={
                    "target_cache": excluded.target_cache,
                    "target_topic": excluded.target_topic,
                    "target_key": excluded.target_key,
                    "payload": excluded.payload,
                    "status": OutboxStatus.PENDING,
                    "attempts": 0,
                    "next_attempt_at": func.now(),
                    "last_error": None,
                },
                where=OutboxMessage.status == OutboxStatus.DEAD,
            )
        else:
            stmt = stmt.on_conflict_do_nothing(constraint="uq_outbox_route_event_id_kind")
        conn.execute(stmt)
    pending = conn.execute(
        select(OutboxMessage.id)
        .where(
            OutboxMessage.route == route,
            OutboxMessage.event_id == event_id,
            OutboxMessage.status == OutboxStatus.PENDING,
        )
        .order_by(OutboxMessage.id)
    ).scalars()
    return list(pending)


def latest_cache_value(conn: Connection, cache: str, key: str) -> str | None:
    """The newest value the outbox holds for a cache key (None if never set, or deleted).

    For an ordered route this is the value its previous event wrote, even before it is sent.
    """
    row = conn.execute(
        select(OutboxMessage.kind, OutboxMessage.payload)
        .where(
            OutboxMessage.target_cache == cache,
            OutboxMessage.target_key == key,
            OutboxMessage.status != OutboxStatus.DEAD,
        )
        .order_by(OutboxMessage.id.desc())
        .limit(1)
    ).first()
    if row is None or row.kind is not OutboxKind.CACHE_SET:
        return None
    value = row.payload.get("value")
    return value if isinstance(value, str) else None


def dead_letter(conn: Connection, kind: str, reason: str, payload: dict[str, Any]) -> None:
    """Keep work no retry can fix, with the reason (kinds here: "workflow", "publish")."""
    conn.execute(insert(DeadLetter).values(kind=kind, reason=reason[:2000], payload=payload))


def resolve_dead_letters(conn: Connection, kind: str, route: str, event_id: int) -> int:
    """Mark a route's dead letters of an event resolved (a replay took them); returns how many."""
    result = conn.execute(
        update(DeadLetter)
        .where(
            and_(
                DeadLetter.kind == kind,
                DeadLetter.resolved_at.is_(None),
                DeadLetter.payload["route"].astext == route,
                DeadLetter.payload["event_id"].astext == str(event_id),
            )
        )
        .values(resolved_at=func.now())
    )
    return int(result.rowcount)
