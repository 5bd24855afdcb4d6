"""`pipeline stats`: per-topic totals from the roll-ups, as a table or JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from pipeline.aggregation.retention import retention_cutoff
from pipeline.aggregation.rollups import rollup
from pipeline.aggregation.stats import gather_stats, parse_when, render_table
from pipeline.cli.common import services, settings_or_exit
from pipeline.config import load_settings
from pipeline.db import get_engine

# No --until: no upper bound, so events stamped slightly ahead of this clock
# (PIPELINE_FUTURE_SKEW_S) count too, in a window that starts after now.
UNBOUNDED = datetime(9999, 1, 1, tzinfo=UTC)


@click.command("stats")
@click.option("--cache", default=None, help="Only this cache.")
@click.option("--topic", default=None, help="Only topics matching this glob, e.g. 'room-*'.")
@click.option("--since", default=None, help="ISO time or age (15m, 2h, 7d); default: all.")
@click.option("--until", default=None, help="ISO time or age (default: no upper bound).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--refresh/--no-refresh",
    default=True,
    show_default=True,
    help="Run an incremental roll-up first, so the totals include the newest events.",
)
def stats(
    cache: str | None,
    topic: str | None,
    since: str | None,
    until: str | None,
    as_json: bool,
    refresh: bool,
) -> None:
    """Per-topic totals: events, lost messages and their ranges, resets, duplicates, latency."""
    settings = settings_or_exit()
    now = datetime.now(UTC)
    try:
        start = parse_when(since, now) if since else datetime.fromtimestamp(0, UTC)
        end = parse_when(until, now) if until else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    with services(settings, broker=False, create=False):
        settings = load_settings()
        engine = get_engine(settings)
        window_s = settings.pipeline_rollup_window_s
        if refresh:
            keep_after = retention_cutoff(settings.pipeline_retention_days)
            rollup(engine, window_s, keep_after=keep_after)
        rows = gather_stats(
            engine, window_s, since=start, until=end or UNBOUNDED, cache=cache, topic=topic
        )
    if as_json:
        payload = {
            "window_s": window_s,
            "since": start.isoformat(),
            "until": end.isoformat() if end else None,
            "topics": [row.to_json() for row in rows],
        }
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(render_table(rows))
