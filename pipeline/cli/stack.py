"""The whole pipeline as one process tree: what `pipeline up` and `pipeline demo` run.

Order of start: stores (embedded unless configured) → migrations → local Momento server (unless
real Momento is configured) → receiver → workers → beat → Flower. Stop is the reverse: Flower,
beat, workers (warm shutdown: running tasks finish, the rest stay in the broker), receiver (its
batcher flushes what it acknowledged), Momento server, then the stores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import httpx

from pipeline.cli import migrate
from pipeline.cli.console import LogEcho
from pipeline.cli.stack_lock import StackLock, stack_lock
from pipeline.cli.supervisor import Supervisor
from pipeline.config import Settings, get_settings, load_settings
from pipeline.errors import ServiceError
from pipeline.stores import ServiceUrls, export_urls, hide_password, running_services

logger = logging.getLogger(__name__)

SECRET_FILE = "webhook-secret"
CHANGE_KEY_FILE = "change-api-key"


@dataclass(frozen=True)
class StackOptions:
    """Ports and sizes of a stack; ports in use move to a free one."""

    host: str = "127.0.0.1"
    receiver_port: int = 8000
    momento_port: int = 8080
    momento_admin_port: int = 8081
    momento_http_port: int = 8082
    flower_port: int = 5555
    workers: int = 1
    concurrency: int = 2
    beat: bool = True
    flower: bool = True
    quiet: bool = False  # children log to PIPELINE_HOME/logs/NAME.log instead of the terminal


@dataclass
class Stack:
    """Where the running parts are."""

    urls: ServiceUrls
    receiver_url: str
    momento_address: str | None
    momento_admin_url: str | None
    momento_http_url: str | None
    flower_url: str | None
    flower_user: str
    flower_password: str | None
    supervisor: Supervisor
    settings: Settings
    notes: list[str] = field(default_factory=list)
    lock: StackLock | None = None
    logs: LogEcho | None = None
    """The children's loud log lines, when they log to files (``quiet``)."""

    @property
    def webhook_url(self) -> str:
        """Where Momento (or the local server) must POST webhooks."""
        return f"{self.receiver_url}/webhooks/momento"


def _free(host: str, port: int) -> int:
    """``port`` if nothing listens there, else a free port."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return port
        except OSError:
            pass
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_alive(supervisor: Supervisor) -> None:
    for child in supervisor.children:
        if child.process is not None and child.process.poll() is not None:
            log = supervisor.log_of(child.name)
            see = f"; see {log}" if log is not None else ""
            raise ServiceError(f"{child.name} exited with {child.process.returncode}{see}")


def _wait_workers(
    settings: Settings, names: list[str], supervisor: Supervisor, timeout_s: float = 60.0
) -> None:
    """Until every worker answers a broker ping (it consumes, its pool is up), so `up` returns
    a pipeline that runs events at once rather than one whose first events wait for workers."""
    from celery import Celery

    from pipeline.celery_app import configure

    probe = Celery("pipeline-probe")
    configure(probe, settings)
    waiting = set(names)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            _check_alive(supervisor)
            for reply in probe.control.ping(timeout=0.5):
                waiting -= {name.split("@", 1)[0] for name in reply}
            if not waiting:
                return
    finally:
        probe.close()
    raise ServiceError(f"workers {sorted(waiting)} did not answer within {timeout_s:.0f} s")


def _wait_http(url: str, supervisor: Supervisor, name: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check_alive(supervisor)
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.2)
    raise ServiceError(f"{name} did not answer {url} within {timeout_s:.0f} s")


def webhook_secret(settings: Settings) -> str:
    """The first configured signing secret, else one generated once under PIPELINE_HOME."""
    if settings.pipeline_webhook_secrets:
        return settings.pipeline_webhook_secrets[0]
    return _generated_secret(settings, SECRET_FILE)


def change_api_key(settings: Settings) -> str:
    """The first configured change-record API key, else one generated once under PIPELINE_HOME."""
    if settings.pipeline_change_api_keys:
        return settings.pipeline_change_api_keys[0]
    return _generated_secret(settings, CHANGE_KEY_FILE)


def _generated_secret(settings: Settings, name: str) -> str:
    """A random secret kept in PIPELINE_HOME/``name`` (mode 0600), made on first use."""
    path = settings.home / name
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    settings.home.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret


@contextlib.contextmanager
def running_stack(options: StackOptions, settings: Settings | None = None) -> Iterator[Stack]:
    """Start every part, yield where they are, stop them all in reverse order on exit.

    One stack per data folder: a second one is refused (StackRunning) before anything starts.
    """
    settings = settings or load_settings()
    with stack_lock(settings.home) as lock, running_services(settings) as urls:
        export_urls(urls)
        os.environ["PIPELINE_HOME"] = str(settings.home)  # children find the same folder
        secret = webhook_secret(settings)
        if not settings.pipeline_webhook_secrets:
            os.environ["PIPELINE_WEBHOOK_SECRETS"] = secret
        if not (settings.pipeline_change_api_keys or settings.pipeline_change_basic_auth):
            os.environ["PIPELINE_CHANGE_API_KEYS"] = change_api_key(settings)
        get_settings.cache_clear()
        settings = get_settings()
        migrate.upgrade(settings)
        log_dir = settings.home / "logs" if options.quiet else None
        logs = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            logs = LogEcho(log_dir)
        supervisor = Supervisor(os.environ, log_dir=log_dir)
        try:
            stack = _start_children(options, settings, urls, supervisor)
            stack.lock, stack.logs = lock, logs
            yield stack
        finally:
            supervisor.stop()


def _start_children(
    options: StackOptions, settings: Settings, urls: ServiceUrls, supervisor: Supervisor
) -> Stack:
    host = options.host
    momento_address = admin_url = http_url = None
    local = settings.momento_api_key is None
    if local and settings.momento_local is None:
        port = _free(host, options.momento_port)
        admin_port = _free(host, options.momento_admin_port)
        http_port = _free(host, options.momento_http_port)
        supervisor.python(
            "momento-local",
            "emulator",
            "--host",
            host,
            "--port",
            str(port),
            "--admin-port",
            str(admin_port),
            "--http-port",
            str(http_port),
        )
        admin_url = f"http://{host}:{admin_port}"
        http_url = f"http://{host}:{http_port}"
        _wait_http(f"{admin_url}/healthz", supervisor, "local Momento server")
        momento_address = f"{host}:{port}"
        os.environ["MOMENTO_LOCAL"] = momento_address
        supervisor.env["MOMENTO_LOCAL"] = momento_address
        get_settings.cache_clear()
        settings = get_settings()
    elif local:
        momento_address = settings.momento_local

    receiver_port = _free(host, options.receiver_port)
    supervisor.python("receiver", "receiver", "--host", host, "--port", str(receiver_port))
    receiver_url = f"http://{host}:{receiver_port}"
    _wait_http(f"{receiver_url}/healthz", supervisor, "receiver")

    for index in range(options.workers):
        supervisor.python(
            f"worker-{index + 1}",
            "worker",
            "--concurrency",
            str(options.concurrency),
            "--hostname",
            f"worker{index + 1}@%h",
        )
    _wait_workers(settings, [f"worker{i + 1}" for i in range(options.workers)], supervisor)
    if options.beat:
        supervisor.python("beat", "beat")

    flower_url = password = None
    if options.flower:
        from pipeline.cli.flower import flower_password

        flower_port = _free(host, options.flower_port)
        password = flower_password(settings)
        supervisor.python("flower", "flower", "--host", host, "--port", str(flower_port))
        flower_url = f"http://{host}:{flower_port}"
        _wait_http(f"{flower_url}/healthcheck", supervisor, "flower")

    return Stack(
        urls=urls,
        receiver_url=receiver_url,
        momento_address=momento_address,
        momento_admin_url=admin_url,
        momento_http_url=http_url,
        flower_url=flower_url,
        flower_user=settings.flower_user,
        flower_password=password,
        supervisor=supervisor,
        settings=settings,
    )


def register_webhook(stack: Stack, cache: str, topic: str) -> None:
    """Point the local server's webhook for (cache, topic) at our receiver, signed our way."""
    if stack.momento_admin_url is None:
        raise ServiceError(
            "webhooks on real Momento are registered in the Momento console or API; "
            f"point them at {stack.webhook_url}"
        )
    secret = webhook_secret(stack.settings)
    response = httpx.put(
        f"{stack.momento_admin_url}/webhooks/{cache}/{topic}",
        json={"url": stack.webhook_url, "secret": secret},
        timeout=5.0,
    )
    if response.status_code >= 300:
        raise ServiceError(f"local server refused webhook {cache}/{topic}: {response.text}")


def describe(stack: Stack) -> list[str]:
    """Human-readable lines saying where everything is."""
    lines = [
        f"receiver   {stack.webhook_url}   (/healthz /readyz /metrics)",
        f"changes    {stack.receiver_url}/changes/SOURCE   "
        f"({stack.settings.pipeline_change_api_key_header}: PIPELINE_CHANGE_API_KEYS, or "
        f"{stack.settings.home / CHANGE_KEY_FILE})",
        f"database   {hide_password(stack.urls.database_url)}",
        f"broker     {hide_password(stack.urls.broker_url)}",
    ]
    if stack.momento_address:
        lines.append(
            f"momento    local server {stack.momento_address}  (admin {stack.momento_admin_url}, "
            f"HTTP API {stack.momento_http_url})"
        )
    else:
        lines.append("momento    real Momento (MOMENTO_API_KEY)")
    if stack.flower_url:
        lines.append(
            f"flower     {stack.flower_url}   login {stack.flower_user} / {stack.flower_password}"
        )
    if stack.supervisor.log_dir is not None:
        lines.append(f"logs       {stack.supervisor.log_dir}/")
    return [*lines, *stack.notes]


def _exact(name: str) -> bool:
    return not any(ch in name for ch in "*?[{")


def prepare_routes(stack: Stack, extra_topics: Iterable[tuple[str, str]] = ()) -> None:
    """Create the routes' caches and point webhooks at the receiver (local Momento only).

    Momento webhooks name one exact topic: a route whose topic is exact gets its webhook here;
    a glob route (``room-*``) needs one per concrete topic, passed as ``extra_topics``.
    """
    from pipeline.workflows.routes import load_routes

    if stack.momento_admin_url is None:
        return
    path = stack.settings.pipeline_routes
    table = load_routes(path, required=False)
    routes = list(table)
    subscribed = set(table.subscriptions)
    caches = {cache for cache, _ in extra_topics} | {cache for cache, _ in subscribed}
    for route in routes:
        caches |= {t.cache for t in route.targets() if _exact(t.cache)}
        if _exact(route.cache):
            caches.add(route.cache)
    for change_route in table.changes:
        targets = (change_route.publish, change_route.cache_set)
        caches |= {t.cache for t in targets if t is not None and _exact(t.cache)}
    for cache in sorted(caches):
        httpx.post(f"{stack.momento_admin_url}/caches/{cache}", timeout=5.0).raise_for_status()
    topics = {(r.cache, r.topic) for r in routes if _exact(r.cache) and _exact(r.topic)}
    for cache, topic in sorted((topics | set(extra_topics)) - subscribed):  # those: listener
        register_webhook(stack, cache, topic)
    for route in routes:
        if not (_exact(route.cache) and _exact(route.topic)):
            stack.notes.append(
                f"route {route.name}: {route.cache}/{route.topic} is a glob; register a webhook "
                "per concrete topic (admin API PUT /webhooks/CACHE/TOPIC)"
            )


def start_listener(stack: Stack, timeout_s: float = 30.0) -> None:
    """Start ``pipeline listen`` if the routes file names [[subscriptions]], and return once
    every subscribed topic is leased (and, on the local server, its stream is open)."""
    from sqlalchemy import text

    from pipeline.db import get_engine
    from pipeline.workflows.routes import load_routes

    topics = load_routes(stack.settings.pipeline_routes, required=False).subscriptions
    if not topics:
        return
    stack.supervisor.python("listener", "listen")
    engine = get_engine(stack.settings)
    leased = text("SELECT count(*) FROM subscription_leases WHERE expires_at > now()")

    def listening() -> bool:
        with engine.connect() as conn:
            if int(conn.execute(leased).scalar_one()) < len(topics):
                return False
        if stack.momento_admin_url is None:
            return True
        stats = httpx.get(f"{stack.momento_admin_url}/stats", timeout=5.0).json()
        return int(stats.get("subscriptions", 0)) >= len(topics)

    deadline = time.monotonic() + timeout_s
    while not listening():
        _check_alive(stack.supervisor)
        if time.monotonic() > deadline:
            raise ServiceError(f"the listener did not open its {len(topics)} subscriptions")
        time.sleep(0.2)
    stack.notes.append(f"listener   {len(topics)} subscribed topic(s) (pipeline listen)")


def start_dashboard(stack: Stack, port: int = 8050) -> None:
    """Start `pipeline dashboard` behind Flower's login, next to the receiver, and say where."""
    from urllib.parse import urlsplit

    from pipeline.cli.flower import flower_password

    host = urlsplit(stack.receiver_url).hostname or "127.0.0.1"
    port = _free(host, port)
    stack.supervisor.python(
        "dashboard", "dashboard", "--host", host, "--port", str(port),
        "--receiver-url", stack.receiver_url,
    )  # fmt: skip
    url = f"http://{host}:{port}"
    _wait_http(f"{url}/healthz", stack.supervisor, "dashboard")
    password = stack.flower_password or flower_password(stack.settings)
    stack.notes.append(f"dashboard  {url}   login {stack.flower_user} / {password}")
