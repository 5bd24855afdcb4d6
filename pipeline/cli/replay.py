"""`pipeline replay`: run routes' workflows again for stored events.

Events are chosen by cache/topic glob, time and sequence range, or by unresolved dead letters.
Replays run on the workers like any run, outside the ordered cursors, and through the same
outbox: a sent or pending row is never sent again, a dead one is revived with the new result and
sent (its dead letter marked resolved), so a replay after a fix delivers what failed, once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from pipeline.aggregation.stats import parse_when
from pipeline.workflows.replays import BATCH, Selection, dispatch_replays, select_runs

LISTED = 20  # runs a dry run lists one per line
PING_TIMEOUT_S = 1.0  # how long replay waits for any worker to answer, to say none runs


def listing(pairs: list[tuple[str, int]], shown: int = LISTED) -> list[str]:
    """One line per run for the first ``shown`` runs, then how many more there are."""
    lines = [f"  route={route} event={event_id}" for route, event_id in pairs[:shown]]
    if len(pairs) > shown:
        lines.append(f"  … and {len(pairs) - shown} more")
    return lines


def _time(ctx: Any, param: Any, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_when(value, datetime.now(UTC))  # the same times as `pipeline stats`
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
            for line in listing(pairs):
                click.echo(line)
            return
        configure(app, settings)
        queued = 0
        with click.progressbar(length=len(pairs), label="queueing") as bar:
            for start in range(0, len(pairs), BATCH):
                chunk = pairs[start : start + BATCH]
                queued += dispatch_replays(engine, app, chunk)
                bar.update(len(chunk))
        click.echo(
            f"queued {queued} runs of {events} events for the workers"
            " (they run when a worker takes them; results go through the outbox)"
        )
        if not app.control.ping(timeout=PING_TIMEOUT_S):
            click.echo(
                "no worker answered: the runs wait in the broker until `pipeline worker` starts"
            )
