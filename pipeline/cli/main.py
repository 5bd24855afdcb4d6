"""The `pipeline` command."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from pipeline.cli.check import check, preflight
from pipeline.cli.common import configure_logging, services, settings_or_exit
from pipeline.cli.dashboard import dashboard
from pipeline.cli.listen import listen
from pipeline.cli.replay import replay
from pipeline.cli.stats import stats
from pipeline.config import load_settings
from pipeline.errors import ConfigError, PipelineError

if TYPE_CHECKING:
    from pipeline.cli.stack import StackOptions

logger = logging.getLogger("pipeline")

SERVICES = {"worker", "beat", "flower", "receiver", "listen", "emulator"}
"""Long-running commands, which log at INFO; the others print their answer and warnings only."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
@click.version_option(package_name="momento-pipeline")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Durable, ordered, observable event processing for Momento Topics."""
    configure_logging(verbose, service=ctx.invoked_subcommand in SERVICES)


@cli.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Migrate the database to REVISION (default: head)."""
    from pipeline.cli import migrate

    settings = settings_or_exit()
    with services(settings, broker=False, migrated=False):
        migrate.upgrade(load_settings(), revision)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Migrate the database down to REVISION (e.g. base)."""
    from pipeline.cli import migrate

    settings = settings_or_exit()
    with services(settings, broker=False, migrated=False, create=False):
        migrate.downgrade(load_settings(), revision)
    click.echo(f"database at {revision}")


QUEUES_HELP = "Comma-separated queues to consume (default: all)."


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("-c", "--concurrency", type=int, default=None, help="Worker processes/threads.")
@click.option(
    "-P",
    "--pool",
    default="prefork",
    show_default=True,
    type=click.Choice(["prefork", "threads", "solo", "gevent", "eventlet"]),
)
@click.option("-Q", "--queues", default=None, help=QUEUES_HELP)
@click.option("-n", "--hostname", default=None, help="Worker node name (default celery@HOST).")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    concurrency: int | None,
    pool: str,
    queues: str | None,
    hostname: str | None,
    loglevel: str,
    celery_args: tuple[str, ...],
) -> None:
    """Run a Celery worker; extra arguments go to `celery worker` unchanged."""
    from pipeline.celery_app import QUEUES, app, configure

    settings = settings_or_exit()
    argv = ["worker", "--loglevel", loglevel, "--pool", pool, "-Q", queues or ",".join(QUEUES)]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if hostname:
        argv += ["--hostname", hostname]
    with services(settings):
        configure(app, load_settings())
        app.worker_main([*argv, *celery_args])


@cli.command()
@click.option("-l", "--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run Celery beat (run exactly one per deployment)."""
    from pipeline.celery_app import app, configure
    from pipeline.cli.beat_lock import sole_beat

    settings = settings_or_exit()
    with services(settings, database=False) as urls, sole_beat(urls.broker_url):
        configure(app, load_settings())
        schedule = settings.home / "celerybeat-schedule"
        settings.home.mkdir(parents=True, exist_ok=True)
        app.start(["beat", "--loglevel", loglevel, "--schedule", str(schedule)])


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5555, show_default=True)
@click.option(
    "--persistent/--no-persistent",
    default=False,
    show_default=True,
    help="Keep Flower's task history in PIPELINE_HOME/flower.db across restarts.",
)
def flower(host: str, port: int, persistent: bool) -> None:
    """Run Flower (basic auth always on; password from FLOWER_PASSWORD or generated)."""
    from pipeline.celery_app import app, configure
    from pipeline.cli.flower import flower_argv, guard_monitoring

    settings = settings_or_exit()
    guard_monitoring()
    with services(settings, database=False):
        configure(app, load_settings())
        app.start(flower_argv(load_settings(), host, port, persistent))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Receiver processes.")
def receiver(host: str, port: int, workers: int) -> None:
    """Run the receiver (POST /webhooks/momento, POST /changes/{source}, /healthz, /readyz,
    /metrics)."""
    import uvicorn

    settings = settings_or_exit()
    takes_changes = settings.pipeline_change_api_keys or settings.pipeline_change_basic_auth
    if not settings.pipeline_webhook_secrets and not takes_changes:
        raise click.UsageError(
            "PIPELINE_WEBHOOK_SECRETS and PIPELINE_CHANGE_API_KEYS are empty: the receiver "
            "would reject every webhook and every change record"
        )
    # The receiver needs only the broker: it must start (and take webhooks, which Momento never
    # retries) while a configured database is down. An embedded one it starts, for /readyz.
    with services(settings, database=not settings.database_url, migrated=False):
        uvicorn.run(
            "pipeline.ingest.receiver:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )


def stack_options(func: Callable[..., None]) -> Callable[..., None]:
    """Options shared by `up` and `demo`."""
    options = [
        click.option(
            "--workers",
            type=int,
            default=2,
            show_default=True,
            help="Worker processes (each with --concurrency slots).",
        ),
        click.option("--concurrency", type=int, default=2, show_default=True),
        click.option("--receiver-port", type=int, default=8000, show_default=True),
        click.option("--momento-port", type=int, default=8080, show_default=True),
        click.option("--flower-port", type=int, default=5555, show_default=True),
        click.option("--flower/--no-flower", default=True, show_default=True),
        click.option("--dashboard-port", type=int, default=8050, show_default=True),
        click.option("--dashboard/--no-dashboard", default=True, show_default=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _options(quiet: bool = False, **kwargs: Any) -> StackOptions:
    from pipeline.cli.stack import StackOptions

    return StackOptions(
        quiet=quiet,
        receiver_port=kwargs["receiver_port"],
        momento_port=kwargs["momento_port"],
        flower_port=kwargs["flower_port"],
        workers=kwargs["workers"],
        concurrency=kwargs["concurrency"],
        flower=kwargs["flower"],
    )


@cli.command()
@stack_options
@click.option(
    "--verbose",
    is_flag=True,
    help="Stream every child's log here (default: files under the data folder's logs/).",
)
def up(verbose: bool, **kwargs: Any) -> None:
    """Run the whole pipeline until Ctrl-C: stores, migrations, local Momento, receiver,
    workers, beat, Flower, the dashboard, and a listener when the routes file has
    [[subscriptions]] (embedded defaults when no URLs are configured).

    The console shows where everything is, then only warnings, errors and, every 10 s while
    something moves, a throughput line; the children's logs are in the data folder's logs/.
    """
    from pipeline.cli.console import Throughput, console_ticker
    from pipeline.cli.stack import (
        describe,
        prepare_routes,
        running_stack,
        start_dashboard,
        start_listener,
    )
    from pipeline.db import get_engine

    settings_or_exit()
    root = logging.getLogger()
    verbose = verbose or root.level <= logging.DEBUG
    root.setLevel(min(root.level, logging.INFO) if verbose else logging.WARNING)
    preflight()
    with running_stack(_options(quiet=not verbose, **kwargs)) as stack:
        prepare_routes(stack)
        start_listener(stack)
        if kwargs["dashboard"]:
            start_dashboard(stack, kwargs["dashboard_port"])
        lines = describe(stack)
        for line in lines:
            click.echo(line)
        if stack.lock is not None:  # for a second `up`'s refusal, without the password
            public = [line.split("   login ")[0] for line in lines]
            stack.lock.describe(public, stack.momento_address)
        click.echo("Ctrl-C stops everything.")
        tick = None
        if stack.logs is not None:
            throughput = Throughput(get_engine(stack.settings), stack.settings)
            tick = console_ticker(click.echo, stack.logs, throughput)
        status = stack.supervisor.wait(tick)
    sys.exit(status)


@cli.command()
@stack_options
@click.option(
    "--count",
    type=int,
    default=200,
    show_default=True,
    help="Messages of the uppercase relay; the other scenarios scale with it.",
)
@click.option(
    "--rate",
    type=float,
    default=25.0,
    show_default=True,
    help="Publishes per second (the ordered relay saturates near 40/s on 2 cores).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to wait for every event to be stored and relayed.",
)
def demo(count: int, rate: float, timeout_s: float, **kwargs: Any) -> None:
    """Run the whole pipeline, publish the seed scenarios with the Momento SDK, print a summary."""
    from pipeline.cli.demo import run_demo
    from pipeline.cli.stack import describe, running_stack, start_dashboard

    settings_or_exit()
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger().setLevel(logging.WARNING)  # the summary is the output; -v for more
    preflight()
    with running_stack(_options(quiet=True, **kwargs)) as stack:
        if kwargs["dashboard"]:
            start_dashboard(stack, kwargs["dashboard_port"])
        for line in describe(stack):
            click.echo(line)
        ok = run_demo(stack, count, rate, timeout_s)
    if not ok:
        click.echo("demo: not every event was stored and relayed in time (see above)", err=True)
    sys.exit(0 if ok else 1)


def _register_optional_commands() -> None:
    with contextlib.suppress(ImportError):
        from pipeline.emulator.command import emulator

        cli.add_command(emulator)


cli.add_command(check)
cli.add_command(stats)
cli.add_command(dashboard)
cli.add_command(replay)
cli.add_command(listen)
_register_optional_commands()


def main() -> None:
    """Console-script entry point: configuration errors exit 2 with one clear line."""
    try:
        cli(standalone_mode=True)
    except PipelineError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
