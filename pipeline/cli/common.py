"""What every `pipeline` subcommand shares: logging, settings, the configured or embedded stores."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import click

from pipeline.config import Settings, get_settings, load_settings
from pipeline.errors import PipelineError
from pipeline.stores import ServiceUrls, export_urls, running_services


def configure_logging(verbose: bool) -> None:
    """One log format for every subcommand; third-party chatter stays at WARNING."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
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


@contextlib.contextmanager
def services(settings: Settings) -> Iterator[ServiceUrls]:
    """Configured or embedded services, exported to the environment for this process's children."""
    with running_services(settings) as urls:
        export_urls(urls)
        get_settings.cache_clear()
        yield urls
