"""`pipeline replay`: run routes' workflows again for stored events.

Events are chosen by cache/topic glob, time and sequence range, or by unresolved dead letters.
Replays run on the workers like any run, outside the ordered cursors, and through the same
outbox: a sent or pending row is never sent again, a dead one is revived with the new result and
sent (its dead letter marked resolved), so a replay after a fix delivers what failed, once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy import Connection, Engine, select

from pipeline.models import DeadLetter, Event
from pipeline.workflows.routes import RouteTable
from pipeline.workflows.templates import glob_regex

if TYPE_CHECKING:
    from celery import Celery

RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
BATCH = 200


def parse_time(value: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC if no zone) or an age like ``15m``, ``2h``, ``1d``."""
    found = RELATIVE.match(value.strip())
    if found:
        ago = timedelta(**{UNITS[found.group(2)]: float(found.group(1))})
        return (now or datetime.now(UTC)) - ago
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"expected an ISO 8601 time or an age like 15m/2h/1d, got {value!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Selection:
    """Which stored events to replay, and for which routes."""

    routes: tuple[str, ...] = ()
    cache: str | None = None
    topic: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    from_seq: int | None = None
    to_seq: int | None = None
    dead_letters: bool = False
    limit: int | None = None


def select_runs(conn: Connection, table: RouteTable, chosen: Selection) -> list[tuple[str, int]]:
    """(route, event id) pairs to replay, in event order."""
    query = select(Event.id, Event.cache, Event.topic).order_by(Event.id)
    if chosen.cache:
        query = query.where(Event.cache.regexp_match(glob_regex(chosen.cache)))
    if chosen.topic:
        query = query.where(Event.topic.regexp_match(glob_regex(chosen.topic)))
    if chosen.since:
        query = query.where(Event.received_at >= chosen.since)
    if chosen.until:
        query = query.where(Event.received_at < chosen.until)
    if chosen.from_seq is not None:
        query = query.where(Event.topic_sequence_number >= chosen.from_seq)
    if chosen.to_seq is not None:
        query = query.where(Event.topic_sequence_number <= chosen.to_seq)
    dead: set[tuple[str, int]] | None = None
    if chosen.dead_letters:
        dead = _dead_pairs(conn)
        query = query.where(Event.id.in_({event_id for _, event_id in dead}))
    pairs = []
    for row in conn.execute(query):
        for route in table.matching(row.cache, row.topic):
            if chosen.routes and route.name not in chosen.routes:
                continue
            if dead is not None and (route.name, row.id) not in dead:
                continue
            pairs.append((route.name, int(row.id)))
            if chosen.limit is not None and len(pairs) >= chosen.limit:
                return pairs
    return pairs


def _dead_pairs(conn: Connection) -> set[tuple[str, int]]:
    rows = conn.execute(
        select(DeadLetter.payload).where(
            DeadLetter.kind.in_(("workflow", "publish")), DeadLetter.resolved_at.is_(None)
        )
    ).scalars()
    pairs = set()
    for payload in rows:
        route, event_id = payload.get("route"), payload.get("event_id")
        if isinstance(route, str) and isinstance(event_id, int):
            pairs.add((route, event_id))
    return pairs


def dispatch_replays(engine: Engine, app: Celery, pairs: list[tuple[str, int]]) -> int:
    """Record the runs, then send them to the workers; returns how many were sent."""
    from pipeline.workflows.runs import claim_runs

    with engine.begin() as conn:
        claimed = claim_runs(conn, pairs, again=True)
    for route, event_id in claimed:
        app.send_task("tasks.workflows.run", args=(route, event_id, "replay"))
    return len(claimed)


def _time(ctx: Any, param: Any, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("replay")
@click.option("--route", "routes", multiple=True, help="Only this route (repeatable).")
@click.option("--cache", help="Inbound cache glob.")
@click.option("--topic", help="Inbound topic glob.")
@click.option("--since", callback=_time, help="Received at/after: ISO time or age (15m, 2h).")
@click.option("--until", callback=_time, help="Received before: ISO time or age.")
@click.option("--from-seq", type=int, help="Lowest topic sequence number.")
@click.option("--to-seq", type=int, help="Highest topic sequence number.")
@click.option("--dead-letters", is_flag=True, help="Only runs with unresolved dead letters.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many runs.")
@click.option("--dry-run", is_flag=True, help="Show what would run; change nothing.")
def replay(dry_run: bool, **options: Any) -> None:
    """Run routes' workflows again for stored events (results go through the outbox)."""
    from pipeline.celery_app import app, configure
    from pipeline.cli.common import services, settings_or_exit
    from pipeline.config import load_settings
    from pipeline.db import get_engine
    from pipeline.errors import PipelineError
    from pipeline.workflows.routes import routes_for

    chosen = Selection(
        **{k: v for k, v in options.items() if k != "routes"}, routes=options["routes"]
    )
    with services(settings_or_exit(), broker=not dry_run, create=False):
        settings = load_settings()
        try:
            table = routes_for(settings)
        except PipelineError as exc:
            raise click.UsageError(str(exc)) from exc
        unknown = sorted(set(chosen.routes) - {route.name for route in table})
        if unknown:
            raise click.UsageError(f"no route named {', '.join(unknown)} in {table.path}")
        engine = get_engine(settings)
        with engine.connect() as conn:
            pairs = select_runs(conn, table, chosen)
        events = len({event_id for _, event_id in pairs})
        if dry_run or not pairs:
            verb = "would replay" if dry_run else "nothing to replay:"
            click.echo(f"{verb} {len(pairs)} runs of {events} events")
            for route, event_id in pairs[:20]:
                click.echo(f"  route={route} event={event_id}")
            return
        configure(app, settings)
        sent = 0
        with click.progressbar(length=len(pairs), label="replaying") as bar:
            for start in range(0, len(pairs), BATCH):
                chunk = pairs[start : start + BATCH]
                sent += dispatch_replays(engine, app, chunk)
                bar.update(len(chunk))
        click.echo(f"replayed {sent} runs of {events} events (results go through the outbox)")
