"""outbound.momento_client against the emulator: clients from Settings, errors, subscriptions."""

from __future__ import annotations

import asyncio
import resource
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from pipeline.config import Settings
from pipeline.emulator import EmulatorServer
from pipeline.errors import MomentoError
from pipeline.outbound import momento_client as mc
from pipeline.outbound.subscriptions import Gap, Message, ResilientSubscription
from pipeline.outbound.subscriptions_async import ResilientSubscriptionAsync
from tests.integration.emulator_support import run, unique

CACHE = "client-tests"


def settings_for(port: int) -> Settings:
    return Settings(momento_local=f"127.0.0.1:{port}", momento_api_key=None, momento_endpoint=None)


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, admin_port=None, retain=5, idle_reset_s=0).start()
    server.create_cache(CACHE)
    yield server
    server.stop()


def poll_events(sub: ResilientSubscription, count: int, timeout_s: float = 20) -> list[object]:
    events: list[object] = []
    end = time.monotonic() + timeout_s
    while len(events) < count and time.monotonic() < end:
        event = sub.poll(0.2)
        if event is not None:
            events.append(event)
    return events


async def poll_events_async(
    sub: ResilientSubscriptionAsync, count: int, timeout_s: float = 20
) -> list[object]:
    events: list[object] = []
    end = time.monotonic() + timeout_s
    while len(events) < count and time.monotonic() < end:
        event = await sub.poll(0.2)
        if event is not None:
            events.append(event)
    return events


def poll_until_failure(sub: ResilientSubscription, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        sub.poll(0.2)


def values(events: list[object]) -> list[object]:
    return [e.value for e in events if isinstance(e, Message)]


def test_settings_choose_the_server_and_credentials() -> None:
    local = Settings(momento_local="10.0.0.5:9000", momento_api_key=None, momento_endpoint=None)
    real = Settings(momento_local=None, momento_api_key="not-a-key", momento_endpoint=None)
    neither = Settings(momento_local=None, momento_api_key=None, momento_endpoint=None)
    assert mc.local_address(local) == ("10.0.0.5", 9000)
    assert mc.local_address(real) is None
    assert mc.local_address(neither) == ("127.0.0.1", 8080)
    provider = mc.credential_provider(local)
    assert (provider.cache_endpoint, provider.port, provider.auth_token) == ("10.0.0.5", 9000, "")
    with pytest.raises(MomentoError, match="MOMENTO_API_KEY is not usable") as caught:
        mc.credential_provider(real)
    assert "not-a-key" not in str(caught.value)


def test_helpers_round_trip_cache_and_topic(emu: EmulatorServer) -> None:
    settings = settings_for(emu.port)
    name = unique("helpers")
    with mc.cache_client(settings) as cache, mc.topic_client(settings) as topics:
        assert mc.create_cache(cache, name) is True
        assert mc.create_cache(cache, name) is False
        mc.cache_set(cache, name, "k", "v")
        mc.cache_set(cache, name, "short", b"x", ttl=timedelta(milliseconds=200))
        assert mc.cache_get(cache, name, "k") == b"v"
        assert mc.cache_get(cache, name, "short") == b"x"
        mc.cache_delete(cache, name, "k")
        assert mc.cache_get(cache, name, "k") is None
        time.sleep(0.3)
        assert mc.cache_get(cache, name, "short") is None
        with ResilientSubscription(topics, name, "t") as sub:
            mc.publish(topics, name, "t", "hello")
            events = poll_events(sub, 1)
    assert events == [Message(name, "t", "hello", 1, events[0].sequence_page)]  # type: ignore[attr-defined]


def test_sdk_errors_become_momento_errors_with_code_and_transience(emu: EmulatorServer) -> None:
    settings = settings_for(emu.port)
    with mc.cache_client(settings) as cache, mc.topic_client(settings) as topics:
        with pytest.raises(MomentoError) as missing:
            mc.cache_get(cache, unique("nope"), "k")
        with pytest.raises(MomentoError) as too_big:
            mc.publish(topics, CACHE, "t", "x" * 5000)
        with pytest.raises(MomentoError) as no_subscription:
            ResilientSubscription(topics, unique("nope"), "t").start()
    with EmulatorServer(port=0, admin_port=None) as gone:
        down = settings_for(gone.port)
    with mc.cache_client(down) as cache, pytest.raises(MomentoError) as unavailable:
        mc.cache_get(cache, CACHE, "k")
    assert (missing.value.code, missing.value.transient) == ("NOT_FOUND_ERROR", False)
    assert (too_big.value.code, too_big.value.transient) == ("LIMIT_EXCEEDED_ERROR", False)
    assert no_subscription.value.code == "NOT_FOUND_ERROR"
    assert (unavailable.value.code, unavailable.value.transient) == ("SERVER_UNAVAILABLE", True)


@pytest.mark.timeout(90)
def test_resilient_subscription_survives_a_server_restart_and_reports_the_gap() -> None:
    first = EmulatorServer(port=0, admin_port=None).start()
    port = first.port
    first.create_cache(CACHE)
    settings = settings_for(port)
    second = None
    try:
        with mc.topic_client(settings) as topics:
            sub = ResilientSubscription(topics, CACHE, "restart", reconnect_timeout_s=30)
            with sub.start():
                for i in range(3):
                    mc.publish(topics, CACHE, "restart", f"a{i}")
                before = poll_events(sub, 3)
                first.stop()
                second = EmulatorServer(port=port, admin_port=None).start()
                second.create_cache(CACHE)
                for i in range(2):
                    mc.publish(topics, CACHE, "restart", f"b{i}")
                after = poll_events(sub, 3, timeout_s=30)
                reconnects = sub.reconnects
    finally:
        first.stop()
        if second is not None:
            second.stop()
    old_page = before[0].sequence_page  # type: ignore[attr-defined]
    assert values(before) == ["a0", "a1", "a2"]
    assert after[0] == Gap(CACHE, "restart", old_page, 4, None, "reset")
    assert values(after) == ["b0", "b1"]
    assert [e.sequence_number for e in after[1:]] == [1, 2]  # type: ignore[attr-defined]
    assert after[1].sequence_page != old_page  # type: ignore[attr-defined]
    assert reconnects >= 1


@pytest.mark.timeout(90)
def test_resilient_async_subscription_survives_a_server_restart_and_reports_the_gap() -> None:
    first = EmulatorServer(port=0, admin_port=None).start()
    port = first.port
    first.create_cache(CACHE)
    servers = [first]

    async def scenario() -> tuple[list[object], list[object]]:
        async with mc.topic_client_async(settings_for(port)) as topics:
            sub = ResilientSubscriptionAsync(topics, CACHE, "restart", reconnect_timeout_s=30)
            async with sub:
                for i in range(3):
                    await mc.publish_async(topics, CACHE, "restart", f"a{i}")
                before = await poll_events_async(sub, 3)
                first.stop()
                second = EmulatorServer(port=port, admin_port=None).start()
                servers.append(second)
                second.create_cache(CACHE)
                await asyncio.sleep(1.5)  # let the reader reconnect, then publish live
                for i in range(2):
                    await mc.publish_async(topics, CACHE, "restart", f"b{i}")
                after = await poll_events_async(sub, 3, timeout_s=30)
            return before, after

    try:
        before, after = run(scenario(), timeout_s=80)
    finally:
        for server in servers:
            server.stop()
    assert values(before) == ["a0", "a1", "a2"]
    old_page = before[0].sequence_page  # type: ignore[attr-defined]
    assert after[0] == Gap(CACHE, "restart", old_page, 4, None, "reset")
    assert values(after) == ["b0", "b1"]


def test_numbers_older_than_the_retained_window_are_reported_as_skipped(
    emu: EmulatorServer,
) -> None:
    topic = unique("window")
    settings = settings_for(emu.port)
    with mc.topic_client(settings) as topics:
        for i in range(1, 21):
            mc.publish(topics, CACHE, topic, f"m{i}")
        page = emu.store.topic(CACHE, topic).page
        with ResilientSubscription(topics, CACHE, topic, resume_at=3, resume_page=page) as sub:
            events = poll_events(sub, 6)
            resume_point = sub.resume_point
    assert events[0] == Gap(CACHE, topic, page, 3, 15, "skipped")
    assert values(events) == [f"m{i}" for i in range(16, 21)]
    assert resume_point == (21, page)


@pytest.mark.timeout(60)
def test_watchdog_reopens_a_silent_stream_without_loss_or_duplicates() -> None:
    with EmulatorServer(port=0, admin_port=None, heartbeat_s=5) as server:
        server.create_cache(CACHE)
        with mc.topic_client(settings_for(server.port)) as topics:
            sub = ResilientSubscription(topics, CACHE, "quiet", stall_timeout_s=0.4)
            with sub.start():
                for i in range(4):
                    mc.publish(topics, CACHE, "quiet", f"q{i}")
                    time.sleep(1.0)
                events = poll_events(sub, 4)
                reconnects, duplicates = sub.reconnects, sub.duplicates
    assert values(events) == [f"q{i}" for i in range(4)]
    assert [e.sequence_number for e in events] == [1, 2, 3, 4]  # type: ignore[attr-defined]
    assert reconnects >= 2
    assert duplicates == 0


def test_close_from_another_thread_stops_promptly_without_spinning(emu: EmulatorServer) -> None:
    topic = unique("close")
    seen: list[object] = []
    with mc.topic_client(settings_for(emu.port)) as topics:
        sub = ResilientSubscription(topics, CACHE, topic).start()
        consumer = threading.Thread(target=lambda: seen.extend(sub), daemon=True)
        consumer.start()
        mc.publish(topics, CACHE, topic, "one")
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        sub.close()
        consumer.join(3)
        closed_in_s = time.monotonic() - started
        cpu_before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        time.sleep(1.0)
        cpu_spent = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu_before
    assert values(seen) == ["one"]
    assert not consumer.is_alive()
    assert closed_in_s < 2
    assert cpu_spent < 0.5, f"{cpu_spent:.2f} s of CPU in 1 s after close: something spins"


@pytest.mark.timeout(30)
def test_subscription_gives_up_after_the_reconnect_timeout_with_a_transient_error() -> None:
    server = EmulatorServer(port=0, admin_port=None).start()
    server.create_cache(CACHE)
    try:
        with mc.topic_client(settings_for(server.port)) as topics:
            sub = ResilientSubscription(topics, CACHE, "doomed", reconnect_timeout_s=1.0)
            with sub.start():
                server.stop()
                started = time.monotonic()
                with pytest.raises(MomentoError) as failure:
                    poll_until_failure(sub, 15)
                gave_up_after_s = time.monotonic() - started
    finally:
        server.stop()
    assert failure.value.transient is True
    assert "lost for more than 1 s" in str(failure.value)
    assert gave_up_after_s < 5
