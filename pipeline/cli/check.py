"""`pipeline check`: is this set-up ready to run? One line per check, non-zero on any failure.

Checks the settings, the data folder, Postgres (reachable, migrated), the broker (reachable,
persistent), Momento credentials (by a real call), the webhook signing secret (when routes are
fed by webhooks) and the routes file. `pipeline up` and `pipeline demo` run the checks that make
sense before their embedded stores start (``before_start``) and refuse to start on a failure.
Nothing here starts or creates a store.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from pipeline.cli.common import store_hint
from pipeline.cli.probes import (
    Finding,
    broker_persistence,
    database_revision,
    ping_broker,
    require_migrated,
)
from pipeline.cli.stack_lock import running_momento_local
from pipeline.config import Settings, load_settings
from pipeline.errors import PipelineError
from pipeline.stores import EmbeddedBroker, EmbeddedPostgres, hide_password
from pipeline.workflows.routes import RouteTable, load_routes


def check_settings() -> tuple[Settings | None, Finding]:
    """The settings from the environment (and .env), or the one line saying what is wrong."""
    try:
        settings = load_settings()
    except PipelineError as exc:
        return None, Finding("settings", "FAIL", str(exc))
    return settings, Finding("settings", "ok", f"valid; data folder {settings.home}")


def _guard(name: str, probe: Callable[[], Finding]) -> Finding:
    try:
        return probe()
    except PipelineError as exc:
        return Finding(name, "FAIL", str(exc))


def check_postgres(settings: Settings, before_start: bool = False) -> Finding | None:
    """Reachable and at the migrations' head (before `up`: only a configured one, reachable)."""
    hint = store_hint(settings, "DATABASE_URL")
    home = settings.home

    def probe() -> Finding:
        url = settings.database_url
        if url and before_start:
            database_revision(url, hint)
            return Finding("postgres", "ok", f"{hide_password(url)} reachable (`up` migrates it)")
        if not url:
            embedded = EmbeddedPostgres(settings.home)
            url = embedded.running_url()
            if url is None:
                state = "is not running" if embedded.exists() else "has no data"
                what = "`pipeline up` starts it, or set DATABASE_URL"
                detail = f"embedded Postgres under {home} {state}; {what}"
                return Finding("postgres", "FAIL", detail)
        head = require_migrated(url, hint)
        return Finding("postgres", "ok", f"{hide_password(url)} reachable, migrated (at {head})")

    if before_start and not settings.database_url:
        return None  # embedded: `up` starts and migrates it
    return _guard("postgres", probe)


def check_broker(settings: Settings, before_start: bool = False) -> Finding | None:
    """Reachable and persistent (Redis: AOF or RDB, which; AMQP: reachable)."""
    home = settings.home

    def probe() -> Finding:
        url = settings.celery_broker_url
        if not url:
            embedded = EmbeddedBroker(settings.home)
            url = embedded.running_url()
            if url is None:
                state = "is not running" if embedded.exists() else "has no data"
                what = "`pipeline up` starts it, or set CELERY_BROKER_URL"
                return Finding("broker", "FAIL", f"embedded broker under {home} {state}; {what}")
        ping_broker(url, store_hint(settings, "CELERY_BROKER_URL"))
        return broker_persistence(url)

    if before_start and not settings.celery_broker_url:
        return None
    return _guard("broker", probe)


def check_momento(settings: Settings, before_start: bool = False) -> Finding | None:
    """Credentials proven by a real call (list caches), or the local server answering."""
    from pipeline.outbound import momento_client

    if settings.momento_api_key is not None:
        where = "real Momento (MOMENTO_API_KEY)"
    elif settings.momento_local:
        where = f"local server at {settings.momento_local} (MOMENTO_LOCAL)"
    elif before_start:
        return Finding("momento", "ok", "local server, started by this command")
    elif address := running_momento_local(settings.home):
        settings = settings.model_copy(update={"momento_local": address})
        where = f"local server at {address} (started by the running `pipeline up`)"
    else:
        host, port = momento_client.LOCAL_DEFAULT
        where = f"local server at {host}:{port} (no MOMENTO_API_KEY or MOMENTO_LOCAL)"
    try:
        caches = momento_client.list_caches(settings)
    except PipelineError as exc:
        what = "fix MOMENTO_LOCAL, or start `pipeline up` or `pipeline emulator`"
        if settings.momento_api_key is not None:
            what = "fix MOMENTO_API_KEY (and MOMENTO_ENDPOINT for v2 keys)"
        return Finding("momento", "FAIL", f"{where}: {_short(exc)}; {what}")
    return Finding("momento", "ok", f"{where}: credentials accepted ({len(caches)} caches)")


def _short(exc: PipelineError) -> str:
    """An SDK error without its boilerplate: the code and the transport's last error."""
    message = str(exc).rsplit("last error: ", 1)[-1]
    code = getattr(exc, "code", None)
    return f"{code}: {message}" if code and code != "UNKNOWN" else message


def webhook_routes(table: RouteTable) -> list[str]:
    """Routes some of whose events arrive by webhook: those not on a subscribed topic."""
    subscribed = set(table.subscriptions)
    return [route.name for route in table if (route.cache, route.topic) not in subscribed]


def check_webhooks(settings: Settings, table: RouteTable | None) -> Finding:
    """A signing secret wherever webhooks are expected (real Momento and webhook-fed routes)."""
    fed = webhook_routes(table) if table is not None else []
    secrets = settings.pipeline_webhook_secrets
    if not fed:
        return Finding("webhooks", "ok", "no route is fed by webhooks")
    names = ", ".join(fed)
    if secrets:
        return Finding("webhooks", "ok", f"{len(secrets)} signing secret(s) for routes {names}")
    if settings.momento_api_key is not None:
        return Finding(
            "webhooks",
            "FAIL",
            f"routes {names} are fed by webhooks but PIPELINE_WEBHOOK_SECRETS is empty: set it to "
            "the webhook's signing secret from the Momento console",
        )
    return Finding(
        "webhooks", "ok", f"local server: signed with the secret kept in {settings.home}"
    )


def check_routes(settings: Settings) -> tuple[RouteTable | None, Finding]:
    """The routes file parses, its workflows import (a missing default file is fine)."""
    path = settings.pipeline_routes
    required = "pipeline_routes" in settings.model_fields_set
    try:
        table = load_routes(path, required=required)
    except PipelineError as exc:
        return None, Finding("routes", "FAIL", str(exc))
    if table.path is not None and not path.exists():
        return table, Finding("routes", "ok", f"no {path} here: events are stored, none routed")
    return table, Finding(
        "routes",
        "ok",
        f"{path}: {len(table)} routes, {len(table.subscriptions)} subscribed topic(s)",
    )


def run_checks(before_start: bool = False) -> list[Finding]:
    """Every check, in order; stops after the settings when they are invalid."""
    settings, first = check_settings()
    if settings is None:
        return [first]
    table, routes = check_routes(settings)
    found = [
        first,
        check_postgres(settings, before_start),
        check_broker(settings, before_start),
        check_momento(settings, before_start),
        check_webhooks(settings, table),
        routes,
    ]
    return [finding for finding in found if finding is not None]


def preflight(echo_ok: bool = False) -> None:
    """The checks `up` and `demo` run first: print what is wrong, exit 1 on a failure."""
    findings = run_checks(before_start=True)
    for finding in findings:
        if echo_ok or finding.level != "ok":
            click.echo(finding.line(), err=finding.level != "ok")
    if any(finding.level == "FAIL" for finding in findings):
        raise click.exceptions.Exit(1)


@click.command("check")
def check() -> None:
    """Check settings, stores, Momento credentials, webhook secrets and routes; one line each."""
    findings = run_checks()
    for finding in findings:
        click.echo(finding.line())
    failed = sum(finding.level == "FAIL" for finding in findings)
    if failed:
        click.echo(f"{failed} check(s) failed", err=True)
        raise click.exceptions.Exit(1)
