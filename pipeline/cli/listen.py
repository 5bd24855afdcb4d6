"""``pipeline listen``: the subscription listener (``pipeline.sources.listener``)."""

from __future__ import annotations

import asyncio
import signal

import click

from pipeline.cli.common import services, settings_or_exit
from pipeline.config import get_settings
from pipeline.sources.listener import Listener


@click.command()
@click.option("--name", default=None, help="Listener name in leases (default host:pid:random).")
def listen(name: str | None) -> None:
    """Consume the routes file's [[subscriptions]] topics into the pipeline.

    Run any number, on any machines sharing DATABASE_URL and CELERY_BROKER_URL: each topic is
    read by one listener at a time, and taken over within 10 s when its listener stops.
    """
    with services(settings_or_exit()):
        listener = Listener(get_settings(), name)
        asyncio.run(_run(listener))


async def _run(listener: Listener) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await listener.run(stop)
