"""The transactional outbox: a workflow's result becomes rows written with the result itself.

``commit_result`` writes a run's outbox rows, records the run, and (for an ordered route) moves
the route's cursor, all in one statement, so they commit together or not at all. Rows are unique
on (route, event_id, kind): a workflow that runs twice adds nothing. A replay may revive a *dead*
row with its new result; a sent or pending row is never written again. ``outbound.publisher``
sends the pending rows.

Outbound topic messages are a JSON envelope ``{"id": "<event id>:<route>", "text": "..."}``: the
id is stable across retries and replays, so a consumer can drop the one duplicate a crash between
sending and marking a row sent may cause.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Update,
    and_,
    bindparam,
    cast,
    func,
    insert,
    literal,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from pipeline.models import (
    DeadLetter,
    OutboxKind,
    OutboxMessage,
    OutboxStatus,
    WorkflowRun,
    outbox_status_is,
)
from pipeline.outbound.outbox_sql import MARK_SENT, SEND_COLUMNS
from pipeline.workflows.results import Output
from pipeline.workflows.route_cursor_sql import SKIPPED
from pipeline.workflows.route_cursors import Move, topic_key
from pipeline.workflows.routes import Route
from pipeline.workflows.templates import render


def message_id(event_id: int, route: str) -> str:
    """The stable id of the message a route publishes for an event."""
    return f"{event_id}:{route}"


def ordering_key(route: Route, cache: str, topic: str) -> str | None:
    """Rows of an ordered route are sent in order per (route, inbound cache, inbound topic)."""
    return topic_key(route.name, cache, topic) if route.ordered else None


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
            payload = {"value": result.cache_value, "ttl_seconds": target.ttl_seconds}
            rows.append(
                base
                | {
                    "kind": kind,
                    "target_cache": render(target.cache, values),
                    "target_topic": None,
                    "target_key": render(target.key, values),
                    "payload": {} if delete else payload,
                    "message_id": f"{mid}:{kind.value}",
                }
            )
    return rows


ROW_COLUMNS = (
    "route",
    "event_id",
    "kind",
    "target_cache",
    "target_topic",
    "target_key",
    "payload",
    "message_id",
    "ordering_key",
    "status",
)


def commit_result(
    conn: Connection,
    route: str,
    event_id: int,
    rows: list[dict[str, Any]],
    *,
    key: str | None,
    revive: bool = False,
    run_status: str = "done",
    move: Move | None = None,
    mark_sent: Sequence[int] = (),
) -> Committed:
    """Write the rows, record the run and apply ``move`` (a cursor move) in ONE statement.

    ``mark_sent``: outbox rows (sent by the caller, who holds their key) to mark sent on the
    way; ``pending`` still lists them, as it sees the rows as they were.
    """
    check = move is not None and move.check_skipped
    statement = move.statement if move else None
    shape = (len(rows), revive, statement, check, key is not None, bool(mark_sent))
    params: dict[str, Any] = {"p_route": route, "p_event_id": event_id, "p_run_status": run_status}
    params["p_key"] = key
    params |= move.params if move else {}
    if mark_sent:
        params["p_sent"] = list(mark_sent)
    for i, row in enumerate(rows):
        params |= {f"r{i}_{name}": row[name] for name in ROW_COLUMNS}
    result = conn.execute(_commit_statement(*shape), params).all()
    if not check:
        return Committed(list(result), [])
    # Checking for skipped events, the statement returns one row at least: their ids, and the
    # pending rows.
    return Committed([row for row in result if row.id is not None], list(result[0].skipped))


class Committed(NamedTuple):
    """What ``commit_result`` did: rows now to send, and events a cursor move passed over."""

    pending: list[Any]
    """Rows pending to send, oldest first: the ordering key's (earlier leftovers included) for
    an ordered route, else the event's."""
    skipped: list[int]
    """Events between the cursor and the event it moved to that never ran (``SKIPPED``)."""


@lru_cache(maxsize=64)
def _commit_statement(
    n_rows: int, revive: bool, move: Update | None, check_skipped: bool, keyed: bool, marks: bool
) -> Any:
    """The statement of ``commit_result`` for one shape, built once (with bound parameters)."""
    route: Any = bindparam("p_route")
    event_id: Any = bindparam("p_event_id")
    status: Any = bindparam("p_run_status")
    run = (
        pg_insert(WorkflowRun)
        .values(route=route, event_id=event_id, status=status, finished_at=func.now())
        .on_conflict_do_update(
            index_elements=["route", "event_id"], set_={"status": status, "finished_at": func.now()}
        )
        .returning(WorkflowRun.route)
        .cte("run")
    )
    ctes = [run] if move is None else [run, move.returning(literal(1)).cte("moved")]
    if marks:
        ctes.append(MARK_SENT.returning(OutboxMessage.id).cte("marked"))
    mine = (
        OutboxMessage.ordering_key == bindparam("p_key")
        if keyed
        else and_(OutboxMessage.route == route, OutboxMessage.event_id == event_id)
    )
    due = (OutboxMessage.next_attempt_at <= func.now()).label("due")
    queries = [select(*SEND_COLUMNS, due).where(outbox_status_is(OutboxStatus.PENDING), mine)]
    if n_rows:
        table = OutboxMessage.__table__.c
        # INSERT … SELECT, not a multi-row VALUES: SQLAlchemy caches the compiled form of this.
        selects = [
            select(*(_typed(f"r{i}_{name}", table[name].type) for name in ROW_COLUMNS))
            for i in range(n_rows)
        ]
        source = selects[0] if n_rows == 1 else union_all(*selects)
        stmt = pg_insert(OutboxMessage).from_select(ROW_COLUMNS, source)
        if revive:
            stmt = stmt.on_conflict_do_update(
                constraint="uq_outbox_route_event_id_kind",
                set_=_revived(stmt.excluded),
                where=OutboxMessage.status == OutboxStatus.DEAD,
            )
        else:
            stmt = stmt.on_conflict_do_nothing(constraint="uq_outbox_route_event_id_kind")
        new = stmt.returning(*SEND_COLUMNS).cte("new")
        queries.append(select(*new.c, literal(True).label("due")))
    both = union_all(*queries).subquery("pending")
    if not check_skipped:
        return select(*both.c).order_by(both.c.id).add_cte(*ctes)
    skipped = select(SKIPPED.label("skipped")).subquery("skipped")
    return (
        select(skipped.c.skipped, *both.c)
        .select_from(skipped.outerjoin(both, true()))
        .order_by(both.c.id)
        .add_cte(*ctes)
    )


def _typed(name: str, type_: Any) -> Any:
    """A bound parameter converted by, and cast in SQL to, a column's type (enums need both)."""
    return cast(bindparam(name, type_=type_), type_)


def _revived(excluded: Any) -> dict[str, Any]:
    return {
        "target_cache": excluded.target_cache,
        "target_topic": excluded.target_topic,
        "target_key": excluded.target_key,
        "payload": excluded.payload,
        "status": OutboxStatus.PENDING,
        "attempts": 0,
        "next_attempt_at": func.now(),
        "last_error": None,
    }


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


def resolve_dead_letters(conn: Connection, route: str, event_id: int) -> int:
    """Mark a run's dead letters (workflow and publish) resolved: a replay took them."""
    result = conn.execute(
        update(DeadLetter)
        .where(
            DeadLetter.kind.in_(("workflow", "publish")),
            DeadLetter.resolved_at.is_(None),
            DeadLetter.payload["route"].astext == route,
            DeadLetter.payload["event_id"].astext == str(event_id),
        )
        .values(resolved_at=func.now())
    )
    return int(result.rowcount)
