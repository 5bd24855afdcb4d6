"""``pipeline listen`` end to end: the official SDK publishes to the local server, listener
processes consume by subscription, a real worker stores into real Postgres.

Every subscription here lives in a child process (the listener) or in the local server; the
test process itself only publishes, so no SDK stream can spin in it (MOMENTO.md E.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from momento import TopicClientAsync

from pipeline.config import Settings
from pipeline.emulator import EmulatorServer
from pipeline.outbound.momento_client import publish_async
from tests.conftest import (
    IDLE_SUBSCRIPTION_S,
    IdleSubscription,
    WorkerProcess,
    count_rows,
    wait_for,
)
from tests.integration.emulator_support import topic_client_async

CACHE = "sub"


class ListenerProcess:
    """`pipeline listen` in its own process group, as deployments run it."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "listen", "--name", name],
                env=dict(os.environ) | env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, admin_port=None, idle_reset_s=0, retain=20_000).start()
    server.create_cache(CACHE)
    yield server
    server.stop()


@pytest.fixture
def listen_env(db: Settings, emulator: EmulatorServer, tmp_path: Path) -> dict[str, str]:
    routes = tmp_path / "routes.toml"
    topics = ", ".join(f'"t-{i}"' for i in range(10))
    routes.write_text(f'[[subscriptions]]\ncache = "{CACHE}"\ntopics = [{topics}]\n')
    return {"MOMENTO_LOCAL": emulator.address, "PIPELINE_ROUTES": str(routes)}


@pytest.fixture
def listeners(
    tmp_path: Path, listen_env: dict[str, str]
) -> Iterator[Callable[[str], ListenerProcess]]:
    started: list[ListenerProcess] = []

    def start(name: str) -> ListenerProcess:
        listener = ListenerProcess(name, listen_env, tmp_path / f"{name}.log")
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop()


async def publish_all(port: int, total: int, topics: int, rate: float) -> dict[str, int]:
    """Publish ``total`` messages round-robin over t-0.. at ``rate``/s; count per topic."""
    client: TopicClientAsync = topic_client_async(port)
    sent: dict[str, int] = {}
    start = time.monotonic()
    try:
        for n in range(total):
            topic = f"t-{n % topics}"
            await publish_async(client, CACHE, topic, f"message {n}")
            sent[topic] = sent.get(topic, 0) + 1
            delay = start + (n + 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    finally:
        await client.close()
    return sent


def stored_by_topic(settings: Settings) -> dict[str, tuple[int, int]]:
    """(rows, distinct numbers) per topic of subscription events."""
    from sqlalchemy import text

    from pipeline.db import get_engine

    query = text(
        "SELECT topic, count(*), count(DISTINCT (sequence_page, topic_sequence_number)) "
        "FROM events WHERE source = 'subscription' GROUP BY topic"
    )
    with get_engine(settings).connect() as conn:
        return {row[0]: (int(row[1]), int(row[2])) for row in conn.execute(query)}


def held_by(settings: Settings) -> dict[str, str | None]:
    from sqlalchemy import text

    from pipeline.db import get_engine

    query = text("SELECT topic, holder FROM subscription_leases WHERE expires_at > now()")
    with get_engine(settings).connect() as conn:
        return {row[0]: row[1] for row in conn.execute(query)}


@pytest.mark.timeout(300)
def test_every_message_is_stored_once_while_the_listener_is_killed_five_times(
    db: Settings,
    emulator: EmulatorServer,
    listen_env: dict[str, str],
    listeners: Callable[[str], ListenerProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    worker_factory("listen-store", env=listen_env)
    current = listeners("l-0")
    assert wait_for(lambda: len(held_by(db)) == 10, 30), "the listener took no leases"
    result: dict[str, int] = {}

    def publisher() -> None:
        result.update(asyncio.run(publish_all(emulator.port, 10_000, 10, rate=400)))

    import threading

    thread = threading.Thread(target=publisher)
    thread.start()
    for kill in range(1, 6):
        time.sleep(3)
        current.kill()
        current = listeners(f"l-{kill}")
    thread.join(120)
    assert not thread.is_alive()
    assert sum(result.values()) == 10_000

    def all_stored() -> bool:
        stored = stored_by_topic(db)
        return all(stored.get(topic, (0, 0))[1] >= n for topic, n in result.items())

    assert wait_for(all_stored, 90, 0.5), stored_by_topic(db)
    stored = stored_by_topic(db)
    assert {topic: rows for topic, (rows, _) in stored.items()} == result  # none twice
    assert {topic: distinct for topic, (_, distinct) in stored.items()} == result
    assert count_rows(db, "SELECT count(*) FROM lost_ranges") == 0


@pytest.mark.timeout(180)
def test_a_killed_listeners_topics_resume_on_the_other_within_ten_seconds(
    db: Settings,
    emulator: EmulatorServer,
    listen_env: dict[str, str],
    listeners: Callable[[str], ListenerProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    worker_factory("listen-failover", env=listen_env)
    first = listeners("first")
    listeners("second")

    def shared() -> bool:
        holders = held_by(db)
        return len(holders) == 10 and set(holders.values()) == {"first", "second"}

    assert wait_for(shared, 30), held_by(db)
    asyncio.run(publish_all(emulator.port, 200, 10, rate=400))
    first.kill()
    killed_at = time.monotonic()
    assert wait_for(lambda: set(held_by(db).values()) == {"second"} and len(held_by(db)) == 10, 15)
    taken_s = time.monotonic() - killed_at
    assert taken_s <= 10, f"topics taken over after {taken_s:.1f} s"
    sent = asyncio.run(publish_all(emulator.port, 200, 10, rate=400))
    total = {topic: 2 * n for topic, n in sent.items()}

    def all_stored() -> bool:
        stored = stored_by_topic(db)
        return {topic: rows for topic, (rows, _) in stored.items()} == total

    assert wait_for(all_stored, 30, 0.5), stored_by_topic(db)


@contextlib.contextmanager
def own_server(
    listen_env: dict[str, str],
    worker_factory: Callable[..., WorkerProcess],
    worker: str,
    **options: Any,
) -> Iterator[tuple[EmulatorServer, dict[str, str]]]:
    """A local server of the test's own (``options`` as EmulatorServer takes them) with the
    cache, and a worker; yields it with the environment that points listeners at it."""
    with EmulatorServer(port=0, admin_port=None, idle_reset_s=0, **options) as server:
        server.create_cache(CACHE)
        env = listen_env | {"MOMENTO_LOCAL": server.address}
        worker_factory(worker, env=env)
        yield server, env


def count_where(settings: Settings, where: str) -> int:
    return count_rows(settings, f"SELECT count(*) FROM events WHERE {where}")


@pytest.mark.timeout(180)
def test_a_local_server_restart_is_recorded_as_a_reset_and_ingestion_goes_on(
    db: Settings,
    emulator: EmulatorServer,
    listen_env: dict[str, str],
    listeners: Callable[[str], ListenerProcess],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    worker_factory("listen-restart", env=listen_env)
    listeners("restart")
    assert wait_for(lambda: len(held_by(db)) == 10, 30)
    asyncio.run(publish_all(emulator.port, 50, 10, rate=400))
    assert wait_for(lambda: count_where(db, "source = 'subscription'") == 50, 30)
    port = emulator.port
    emulator.stop()  # its state goes: every topic restarts its numbering on a new page
    restarted = EmulatorServer(port=port, admin_port=None, idle_reset_s=0, retain=20_000).start()
    try:
        restarted.create_cache(CACHE)

        def after_restart() -> bool:  # publish until the listener has resubscribed
            asyncio.run(publish_all(port, 10, 10, rate=400))
            return count_where(db, "arrival = 'reset'") == 10

        assert wait_for(after_restart, 60, 1.0), "no reset recorded on the new pages"
        pages = "SELECT count(DISTINCT sequence_page) FROM events WHERE topic = 't-0'"
        assert count_rows(db, pages) == 2
        assert count_where(db, "source = 'subscription' AND epoch IS NULL") == 0
    finally:
        restarted.stop()


@pytest.mark.timeout(180)
def test_topics_past_the_subscription_limit_are_refused_clearly_and_the_rest_flow(
    db: Settings,
    listen_env: dict[str, str],
    tmp_path: Path,
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    with own_server(listen_env, worker_factory, "listen-limit", max_subscriptions=6) as (
        limited,
        env,
    ):
        listener = ListenerProcess("limited", env, tmp_path / "limited.log")
        try:
            refused = "subscription refused"
            assert wait_for(lambda: refused in listener.log.read_text(), 30)
            line = next(x for x in listener.log.read_text().splitlines() if refused in x)
            assert "subscription limit is reached" in line
            assert "Traceback" not in listener.log.read_text()
            time.sleep(3)  # let the accepted streams settle
            sent = asyncio.run(publish_all(limited.port, 100, 10, rate=400))
            assert sum(sent.values()) == 100

            def six_topics_flow() -> bool:
                stored = stored_by_topic(db)
                return len([t for t, (rows, _) in stored.items() if rows == sent[t]]) >= 6

            assert wait_for(six_topics_flow, 30, 0.5), stored_by_topic(db)
            assert listener.process.poll() is None
        finally:
            listener.stop()


@pytest.mark.timeout(180)
def test_webhooks_and_a_subscription_on_the_same_topics_store_each_message_once(
    db: Settings,
    emulator: EmulatorServer,
    listen_env: dict[str, str],
    listeners: Callable[[str], ListenerProcess],
    worker_factory: Callable[..., WorkerProcess],
    receiver_factory: Callable[..., Any],
) -> None:
    from tests.conftest import TEST_SECRET

    receiver = receiver_factory()
    for i in range(10):
        url = f"{receiver.url}/webhooks/momento"
        emulator.register_webhook(CACHE, f"t-{i}", url, secret=TEST_SECRET)
    emulator.set_faults(CACHE, "t-*", drop=0.1)
    worker_factory("both-paths", env=listen_env)
    listeners("both")
    assert wait_for(lambda: len(held_by(db)) == 10, 30)
    time.sleep(2)  # subscriptions open
    sent = asyncio.run(publish_all(emulator.port, 1_000, 10, rate=200))

    def stored_once() -> bool:
        return {t: rows for t, (rows, _) in stored_by_topic_any(db).items()} == sent

    assert wait_for(stored_once, 60, 0.5), stored_by_topic_any(db)
    time.sleep(2)  # nothing more arrives
    stored = stored_by_topic_any(db)
    assert {t: rows for t, (rows, _) in stored.items()} == sent
    assert {t: distinct for t, (_, distinct) in stored.items()} == sent
    assert count_where(db, "source = 'webhook'") > 0, "no webhook stored: the test proves nothing"
    assert count_where(db, "source = 'subscription'") > 0
    dropped = sum(emulator.webhook_stats(CACHE, f"t-{i}").dropped for i in range(10))
    assert dropped > 0
    assert count_rows(db, "SELECT count(*) FROM lost_ranges") == 0


def stored_by_topic_any(settings: Settings) -> dict[str, tuple[int, int]]:
    """(rows, distinct numbers) per topic, from any door."""
    from sqlalchemy import text

    from pipeline.db import get_engine

    query = text(
        "SELECT topic, count(*), count(DISTINCT topic_sequence_number) FROM events GROUP BY topic"
    )
    with get_engine(settings).connect() as conn:
        return {row[0]: (int(row[1]), int(row[2])) for row in conn.execute(query)}


@pytest.mark.timeout(420)
def test_an_idle_subscription_survives_five_minutes(idle_subscription: IdleSubscription) -> None:
    remaining_s = idle_subscription.started + IDLE_SUBSCRIPTION_S - time.monotonic()
    time.sleep(max(0.0, remaining_s))  # the rest of the suite usually took longer
    assert idle_subscription.process.poll() is None, "the subscriber died while idle"
    asyncio.run(publish_once(idle_subscription.server.port))
    assert wait_for(lambda: any(x.startswith("message ") for x in idle_subscription.lines), 10)
    # The same stream, never reopened: heartbeats kept it alive (no GOAWAY, no stall).
    assert "message after the quiet reconnects=0" in idle_subscription.lines
    # A plain sync SDK stream, with no watchdog to reopen it, outlived the quiet too.
    assert wait_for(lambda: "sync after the quiet" in idle_subscription.lines, 10)


async def publish_once(port: int) -> None:
    client = topic_client_async(port)
    try:
        await publish_async(client, IdleSubscription.cache, IdleSubscription.topic,
                            "after the quiet")  # fmt: skip
    finally:
        await client.close()


@pytest.mark.timeout(180)
def test_numbers_the_server_no_longer_held_are_recorded_lost_exactly(
    db: Settings,
    listen_env: dict[str, str],
    tmp_path: Path,
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    with own_server(listen_env, worker_factory, "listen-window", retain=50) as (small, env):
        first = ListenerProcess("window-1", env, tmp_path / "window-1.log")
        try:
            assert wait_for(lambda: len(held_by(db)) == 10, 30)
            time.sleep(2)  # streams open
            asyncio.run(publish_all(small.port, 200, 10, rate=400))  # numbers 1..20 per topic
            assert wait_for(lambda: count_where(db, "source = 'subscription'") == 200, 30)
            first.kill()
            asyncio.run(publish_all(small.port, 2_000, 10, rate=1_000))  # 21..220; 171.. kept
        finally:
            first.stop()
        second = ListenerProcess("window-2", env, tmp_path / "window-2.log")
        try:
            assert wait_for(lambda: count_where(db, "source = 'subscription'") == 700, 60)
            time.sleep(2.5)  # past the reorder window: the next arrivals declare the hole lost
            asyncio.run(publish_all(small.port, 10, 10, rate=400))
            query = "SELECT count(*) FROM lost_ranges WHERE first_seq = 21 AND last_seq = 170"
            assert wait_for(lambda: count_rows(db, query) == 10, 30)
            assert count_rows(db, "SELECT count(*) FROM lost_ranges") == 10
            assert count_where(db, "source = 'subscription'") == 710
        finally:
            second.stop()
