"""The ``pipeline emulator`` command (also ``python -m pipeline.emulator``)."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

import click

from pipeline.emulator.faults import FaultSpec
from pipeline.emulator.registrations import (
    Registrations,
    WebhookEntry,
    apply_registrations,
    load_registrations,
)
from pipeline.emulator.server import EmulatorServer

logger = logging.getLogger(__name__)


def _parse_webhook(value: str) -> WebhookEntry:
    target, sep, url = value.partition("=")
    cache, colon, topic = target.partition(":")
    if not sep or not colon or not cache or not topic or not url:
        raise click.BadParameter(f"expected CACHE:TOPIC=URL, got {value!r}", param_hint="--webhook")
    return WebhookEntry(cache, topic, url)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.command("emulator")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (gRPC and admin)."
)
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="gRPC port the Momento SDK dials (never 443: the SDK would use TLS); 0 picks one.",
)
@click.option(
    "--admin-port",
    default=8081,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port of the admin HTTP API (webhooks, faults, stats); 0 picks one.",
)
@click.option("--no-admin", is_flag=True, help="Do not start the admin HTTP API.")
@click.option(
    "--http-port",
    default=8082,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port of Momento's HTTP API (cache get/set/delete, topic publish and long poll).",
)
@click.option("--no-http", is_flag=True, help="Do not start Momento's HTTP API.")
@click.option(
    "--api-key",
    metavar="KEY",
    envvar="MOMENTO_LOCAL_API_KEY",
    help="The only token the HTTP API accepts (default: any non-empty token).",
)
@click.option(
    "--http-poll-s",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.1, 300),
    help="Longest wait of an HTTP topic long poll before it answers with no items.",
)
@click.option(
    "--cache",
    "caches",
    multiple=True,
    metavar="NAME",
    help="Create this cache at start (repeatable).",
)
@click.option(
    "--webhooks-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML (.toml) or JSON file declaring caches, webhooks and faults.",
)
@click.option(
    "--webhook",
    "webhooks",
    multiple=True,
    metavar="CACHE:TOPIC=URL",
    help="Register a webhook (repeatable); its generated secret is printed.",
)
@click.option(
    "--webhook-secret",
    metavar="SECRET",
    help="Signing secret for --webhook entries instead of generated ones.",
)
@click.option(
    "--idle-reset-s",
    default=600.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Restart a topic's numbering (new page) after this many idle seconds; 0: never.",
)
@click.option(
    "--heartbeat-s",
    default=4.0,
    show_default=True,
    type=click.FloatRange(0.1, 5),
    help="Heartbeat interval on idle subscription streams.",
)
@click.option(
    "--retain",
    default=1024,
    show_default=True,
    type=click.IntRange(min=0),
    help="Messages kept per topic for resuming subscriptions.",
)
@click.option(
    "--fresh-replay",
    default=1,
    show_default=True,
    type=click.IntRange(min=0),
    help="Latest messages a subscription without a resume point gets first.",
)
@click.option(
    "--subscriber-queue",
    default=4096,
    show_default=True,
    type=click.IntRange(min=1),
    help="Messages buffered per slow subscriber before it gets a discontinuity.",
)
@click.option(
    "--max-subscriptions",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Concurrent subscriptions before RESOURCE_EXHAUSTED.",
)
@click.option(
    "--max-publish-bytes",
    default=4096,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest topic message (Momento: 4 KB); larger gets RESOURCE_EXHAUSTED.",
)
@click.option("--seed", type=int, help="Seed for fault injection (same seed, same faults).")
@click.option(
    "--drop",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Fault: fraction of webhook deliveries never sent.",
)
@click.option(
    "--delay-ms",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Fault: delay added before each webhook delivery.",
)
@click.option(
    "--duplicate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Fault: fraction of webhook deliveries sent twice.",
)
@click.option(
    "--reorder-window",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Fault: shuffle webhook deliveries within groups of this size.",
)
@click.option(
    "--reset-every",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Fault: force a topic sequence reset after every N publishes.",
)
def emulator(
    host: str,
    port: int,
    admin_port: int,
    no_admin: bool,
    http_port: int,
    no_http: bool,
    api_key: str | None,
    http_poll_s: float,
    caches: tuple[str, ...],
    webhooks_file: Path | None,
    webhooks: tuple[str, ...],
    webhook_secret: str | None,
    idle_reset_s: float,
    heartbeat_s: float,
    retain: int,
    fresh_replay: int,
    subscriber_queue: int,
    max_subscriptions: int,
    max_publish_bytes: int,
    seed: int | None,
    drop: float,
    delay_ms: float,
    duplicate: float,
    reorder_window: int,
    reset_every: int,
) -> None:
    """Run the local Momento-compatible server (topics, cache, signed webhooks, faults).

    Point the SDK at it with CredentialProvider.for_momento_local(HOST, PORT), or the
    pipeline with MOMENTO_LOCAL=HOST:PORT. Stops on Ctrl-C or SIGTERM.
    """
    if port == 443:
        raise click.BadParameter("443 makes the Momento SDK use TLS", param_hint="--port")
    if api_key is not None and not api_key:
        raise click.BadParameter("must not be empty", param_hint="--api-key")
    entries = [_parse_webhook(value) for value in webhooks]
    try:
        registrations = load_registrations(webhooks_file) if webhooks_file else Registrations()
    except (OSError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--webhooks-file") from exc
    server = EmulatorServer(
        host,
        port,
        admin_port=None if no_admin else admin_port,
        http_port=None if no_http else http_port,
        api_key=api_key,
        http_poll_s=http_poll_s,
        idle_reset_s=idle_reset_s,
        heartbeat_s=heartbeat_s,
        retain=retain,
        fresh_replay=fresh_replay,
        subscriber_queue=subscriber_queue,
        max_subscriptions=max_subscriptions,
        max_publish_bytes=max_publish_bytes,
        seed=seed,
    )
    spec = FaultSpec(
        drop=drop,
        delay_ms=delay_ms,
        duplicate=duplicate,
        reorder_window=reorder_window,
        reset_every=reset_every,
    )
    try:
        server.start()
    except OSError as exc:
        raise click.ClickException(str(exc)) from exc
    # Started: what exists now lives as long as the process, so keep it out of the collector's
    # full scans (pauses of tens of ms in the middle of deliveries otherwise).
    gc.collect()
    gc.freeze()
    try:
        if spec.active:
            server.set_faults("*", "*", spec)
        for cache in caches:
            server.create_cache(cache)
        made = apply_registrations(server, registrations)
        for entry in entries:
            secret = server.register_webhook(entry.cache, entry.topic, entry.url, webhook_secret)
            made.append((entry, secret))
        _announce(server, made)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)
        while not server.wait(1.0):
            pass
    except KeyboardInterrupt:
        click.echo("emulator stopping")
    finally:
        server.stop()


def _announce(server: EmulatorServer, made: list[tuple[WebhookEntry, str]]) -> None:
    click.echo(
        f"emulator ready grpc={server.address} admin={server.admin_url or 'off'} "
        f"http={server.http_url or 'off'}"
    )
    click.echo(f"MOMENTO_LOCAL={server.address}")
    for entry, secret in made:
        shown = secret if entry.secret is None else "(as given)"
        click.echo(
            f"webhook cache={entry.cache} topic={entry.topic} url={entry.url} secret={shown}"
        )
