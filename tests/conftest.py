"""Session fixtures: real Postgres, real broker, real Celery workers.

``DATABASE_URL`` / ``CELERY_BROKER_URL`` point the tests at servers you run; unset, the tests
start embedded ones (pipeline.stores) in a temporary directory. Nothing is mocked and nothing is
skipped: if a server cannot start, the tests fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from sqlalchemy import text

from pipeline.cli import migrate
from pipeline.config import Settings, get_settings
from pipeline.stores import EmbeddedBroker, EmbeddedPostgres

TEST_SECRET = "test-secret-0123456789"


@pytest.fixture(scope="session")
def pipeline_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private PIPELINE_HOME for this test session."""
    return tmp_path_factory.mktemp("pipeline-home")


@pytest.fixture(scope="session")
def postgres_url(pipeline_home: Path) -> Iterator[str]:
    """A migrated Postgres: DATABASE_URL if set, else an embedded one."""
    url = os.environ.get("DATABASE_URL")
    server = None
    if not url:
        server = EmbeddedPostgres(pipeline_home)
        url = server.start()
    migrate.upgrade(Settings(database_url=url, pipeline_home=pipeline_home))
    yield url
    from pipeline.db import dispose_engines

    dispose_engines()
    if server is not None:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(pipeline_home: Path) -> Iterator[str]:
    """A Redis-protocol broker: CELERY_BROKER_URL if set, else an embedded Valkey."""
    url = os.environ.get("CELERY_BROKER_URL")
    if url:
        yield url
        return
    broker = EmbeddedBroker(pipeline_home, port=0)
    yield broker.start()
    broker.stop()


@pytest.fixture(scope="session")
def settings(postgres_url: str, redis_url: str, pipeline_home: Path) -> Iterator[Settings]:
    """Settings for the session, also exported to the environment for subprocesses."""
    # No routes unless a test brings its own: the sample routes.toml in the working directory
    # would otherwise run workflows on every test's events.
    no_routes = pipeline_home / "no-routes.toml"
    no_routes.write_text("# tests that run workflows set PIPELINE_ROUTES to their own file\n")
    env = {
        "DATABASE_URL": postgres_url,
        "CELERY_BROKER_URL": redis_url,
        "PIPELINE_HOME": str(pipeline_home),
        "PIPELINE_WEBHOOK_SECRETS": TEST_SECRET,
        "PIPELINE_VISIBILITY_TIMEOUT_S": "10",
        "PIPELINE_ROUTES": str(no_routes),
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    get_settings.cache_clear()
    from pipeline.celery_app import app, configure

    configure(app, get_settings())
    yield get_settings()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()


@pytest.fixture
def db(settings: Settings) -> Settings:
    """Empty tables before each test that uses the database."""
    from pipeline.db import get_engine
    from pipeline.models import Base

    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with get_engine(settings).begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    flush_broker(settings)
    return settings


def flush_broker(settings: Settings) -> None:
    """Drop every queued message, so no test sees another's leftovers."""
    import redis

    assert settings.celery_broker_url
    client = redis.Redis.from_url(settings.celery_broker_url)
    client.flushdb()
    client.close()


def count_rows(settings: Settings, sql: str) -> int:
    """Run a COUNT query against the test database."""
    from pipeline.db import get_engine

    with get_engine(settings).connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``predicate`` until true or the timeout; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


class WorkerProcess:
    """`pipeline worker` in a subprocess: a real Celery worker, as deployments run it."""

    def __init__(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.env = dict(env or {})  # overrides of os.environ, e.g. another CELERY_BROKER_URL
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, settings: Settings, timeout_s: float = 30.0) -> WorkerProcess:
        """Start the worker and wait until it answers a broadcast ping on its broker."""
        from pipeline.celery_app import app, configure, create_app

        control = app
        broker = self.env.get("CELERY_BROKER_URL")
        if broker and broker != settings.celery_broker_url:
            control = create_app()
            configure(control, settings.model_copy(update={"celery_broker_url": broker}))
            # Celery reads $CELERY_BROKER_URL before conf.broker_url: name the broker outright.
            control.conf.broker_read_url = control.conf.broker_write_url = broker
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker", "-n", f"{self.name}@%h", *self.args],
            env=dict(os.environ) | self.env,
            start_new_session=True,
        )
        hostname = None

        def ready() -> bool:
            nonlocal hostname
            assert self.process is not None
            assert self.process.poll() is None, f"worker exited with {self.process.returncode}"
            replies = control.control.ping(timeout=0.5) or []
            names = [name for reply in replies for name in reply]
            hostname = next((n for n in names if n.startswith(f"{self.name}@")), None)
            return hostname is not None

        try:
            up = wait_for(ready, timeout_s, 0.2)
        finally:
            if control is not app:
                control.close()
        if not up:
            self.kill()  # not handed to any fixture, so nothing else would stop it
        assert up, f"worker {self.name} did not come up"
        return self

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children)."""
        import signal

        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def terminate(self) -> None:
        """Ask for a warm shutdown without waiting for it (``stop`` waits)."""
        import signal

        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Warm shutdown; kill if it hangs."""
        self.terminate()
        if self.process and self.process.poll() is None:
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def worker_factory(settings: Settings) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `pipeline worker` subprocesses; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(name: str = "w1", *args: str, env: Mapping[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(name, *args, env=env).start(settings)
        started.append(worker)
        return worker

    yield start
    for worker in started:  # all shut down at once, not one after the other
        worker.terminate()
    for worker in started:
        worker.stop()


class ReceiverServer:
    """The real receiver app under uvicorn in a background thread, on a free port."""

    def __init__(self, app: object) -> None:
        import uvicorn

        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            loop="asyncio",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
        )
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    def start(self, timeout_s: float = 10.0) -> ReceiverServer:
        """Serve until stop(); return once listening."""
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        assert wait_for(lambda: self.server.started, timeout_s, 0.02), "receiver did not start"
        return self

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:PORT."""
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Graceful shutdown (flushes the group-commit batcher)."""
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(15)


@pytest.fixture
def receiver_factory(settings: Settings) -> Iterator[Callable[..., ReceiverServer]]:
    """Start receivers built by pipeline.ingest.receiver.create_app; stopped after the test."""
    from pipeline.ingest.receiver import create_app

    started: list[ReceiverServer] = []

    def start(app_settings: Settings | None = None, **kwargs: object) -> ReceiverServer:
        server = ReceiverServer(create_app(app_settings or settings, **kwargs)).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def signed_webhook(
    seq: int,
    *,
    cache: str = "chat",
    topic: str = "room-1",
    text_value: str | None = None,
    secret: str = TEST_SECRET,
    publish_ms: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A Momento webhook body and its headers, signed like Momento signs them."""
    import json

    from pipeline.ingest.signing import sign

    now = int(time.time() * 1000) if publish_ms is None else publish_ms
    body = json.dumps(
        {
            "cache": cache,
            "topic": topic,
            "event_timestamp": now - 3,
            "publish_timestamp": now,
            "topic_sequence_number": seq,
            "token_id": "",
            "text": f"message {seq}" if text_value is None else text_value,
        }
    ).encode()
    headers = {"content-type": "application/json", "momento-signature": sign(body, secret)}
    return body, headers


EMBEDDED_ENV_DROP = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "MOMENTO_LOCAL",
    "MOMENTO_API_KEY",
    "PIPELINE_WEBHOOK_SECRETS",
    "PIPELINE_HOME",
    "PIPELINE_ROUTES",
)


def embedded_env(home: Path) -> dict[str, str]:
    """This process's environment without configured services: a child runs all-embedded."""
    env = {k: v for k, v in os.environ.items() if k not in EMBEDDED_ENV_DROP}
    env["PIPELINE_HOME"] = str(home)
    return env


def queued_messages(settings: Settings, queue: str = "ingest") -> int:
    """Messages waiting in a Celery queue on the test broker."""
    import redis

    assert settings.celery_broker_url
    client = redis.Redis.from_url(settings.celery_broker_url)
    try:
        return int(client.llen(queue))
    finally:
        client.close()


# --- an idle subscription, left alone while the suite runs ---------------------------------------

IDLE_SUBSCRIPTION_S = 300.0
IDLE_CHECK = "test_an_idle_subscription_survives_five_minutes"


class IdleSubscription:
    """A local server and a subscriber process (``tests.e2e.idle_subscriber``) on one topic."""

    cache, topic = "idle", "quiet"

    def __init__(self) -> None:
        from pipeline.emulator import EmulatorServer

        self.server = EmulatorServer(port=0, admin_port=None, idle_reset_s=0).start()
        self.server.create_cache(self.cache)
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.idle_subscriber", self.server.address,
             self.cache, self.topic],
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        assert wait_for(lambda: "ready" in self.lines, 30), "idle subscriber did not start"
        self.started = time.monotonic()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.strip())

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait()
        self.reader.join(5)  # it reads to the end of the pipe, then the pipe can close
        assert self.process.stdout is not None
        self.process.stdout.close()
        self.server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The idle subscription's check runs last, when the rest of the suite has filled its wait."""
    items.sort(key=lambda item: item.name == IDLE_CHECK)
