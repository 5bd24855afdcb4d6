"""What every `pipeline` subcommand shares: logging, settings, the configured or embedded stores."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import click

from pipeline.cli.probes import database_revision, ping_broker, require_migrated
from pipeline.config import Settings, get_settings, load_settings
from pipeline.errors import PipelineError
from pipeline.stores import ServiceUrls, export_urls, running_services


def configure_logging(verbose: bool, service: bool = True) -> None:
    """One log format for every subcommand; third-party chatter stays at WARNING.

    Services log at INFO; a command that prints an answer (``stats``, ``check``, ``db``) logs
    warnings and errors only, so its output is the answer. ``verbose``: DEBUG for all.
    """
    level = logging.INFO if service else logging.WARNING
    logging.basicConfig(
        level=logging.DEBUG if verbose else level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("pgserver", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def settings_or_exit() -> Settings:
    """Settings from the environment, or exit 2 with the one-line reason."""
    try:
        return load_settings()
    except PipelineError as exc:
        raise click.UsageError(str(exc)) from exc


def store_hint(settings: Settings, variable: str) -> str:
    """What to do when a store does not answer: fix its URL, or start the embedded one."""
    configured = settings.database_url if variable == "DATABASE_URL" else settings.celery_broker_url
    if configured:
        return f"start it or fix {variable}"
    return f"the embedded server under {settings.home} did not answer; see its log there"


@contextlib.contextmanager
def services(
    settings: Settings,
    *,
    database: bool = True,
    migrated: bool = True,
    broker: bool = True,
    create: bool = True,
) -> Iterator[ServiceUrls]:
    """The stores a command needs, configured or embedded, checked and exported to the
    environment for this process's children.

    Every command opens its stores here, so each fails the same way: one line naming the store,
    its URL and what to do, within a few seconds. ``migrated`` requires the schema at the code's
    head; ``create=False`` (read-only commands) never creates an embedded store.
    """
    with running_services(settings, database=database, broker=broker, create=create) as urls:
        if database:
            hint = store_hint(settings, "DATABASE_URL")
            if migrated:
                require_migrated(urls.database_url, hint)
            else:
                database_revision(urls.database_url, hint)
        if broker:
            ping_broker(urls.broker_url, store_hint(settings, "CELERY_BROKER_URL"))
        export_urls(urls)
        get_settings.cache_clear()
        yield urls
