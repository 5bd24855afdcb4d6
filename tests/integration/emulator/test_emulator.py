"""The emulator against the official Momento SDK (sync and async), in a thread and as a process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import grpc
import httpx
import pytest
from click.testing import CliRunner
from momento.errors import MomentoErrorCode
from momento.responses import (
    CacheDelete,
    CacheGet,
    CacheSet,
    CreateCache,
    DeleteCache,
    ListCaches,
    TopicPublish,
    TopicSubscribe,
)
from momento_wire_types import cachepubsub_pb2 as pb
from momento_wire_types import cachepubsub_pb2_grpc as pb_grpc

from pipeline.emulator import EmulatorServer
from pipeline.emulator.command import emulator as emulator_command
from pipeline.emulator.state import Store, TopicSettings
from pipeline.emulator.topics import TopicRetired
from tests.integration.emulator_support import (
    cache_client,
    cache_client_async,
    run,
    subscription,
    take,
    take_async,
    topic_client,
    topic_client_async,
    unique,
)

CACHE = "emulator-tests"


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, admin_port=None, idle_reset_s=0).start()
    server.create_cache(CACHE)
    yield server
    server.stop()


def _pages_and_numbers(items: list[object]) -> tuple[set[int], list[int]]:
    return {i.sequence_page for i in items}, [i.sequence_number for i in items]  # type: ignore[attr-defined]


def test_thousand_messages_arrive_in_order_on_one_page_sync(emu: EmulatorServer) -> None:
    topic = unique("thousand")
    with topic_client(emu.port) as client:
        sub = subscription(client.subscribe(CACHE, topic))
        for i in range(1000):
            assert isinstance(client.publish(CACHE, topic, f"m{i}"), TopicPublish.Success)
        items = take(sub, 1000, deadline_s=60)
        sub.unsubscribe()
    pages, numbers = _pages_and_numbers(items)
    assert [i.value for i in items] == [f"m{i}" for i in range(1000)]
    assert numbers == list(range(1, 1001))
    assert len(pages) == 1
    assert 0 not in pages


def test_thousand_messages_arrive_in_order_on_one_page_async(emu: EmulatorServer) -> None:
    topic = unique("thousand-async")

    async def scenario() -> list[object]:
        async with topic_client_async(emu.port) as client:
            sub = subscription(await client.subscribe(CACHE, topic))
            for i in range(1000):
                assert isinstance(await client.publish(CACHE, topic, f"m{i}"), TopicPublish.Success)
            items = await take_async(sub, 1000, deadline_s=60)
            sub.unsubscribe()
            return items

    items = run(scenario())
    pages, numbers = _pages_and_numbers(items)
    assert [i.value for i in items] == [f"m{i}" for i in range(1000)]  # type: ignore[attr-defined]
    assert numbers == list(range(1, 1001))
    assert len(pages) == 1


def test_resume_from_n_delivers_n_to_the_end(emu: EmulatorServer) -> None:
    topic = unique("resume")
    with topic_client(emu.port) as client:
        for i in range(1, 51):
            client.publish(CACHE, topic, f"m{i}")
        first = subscription(client.subscribe(CACHE, topic))
        page = take(first, 1)[0].sequence_page
        first.unsubscribe()
        sub = subscription(
            client.subscribe(
                CACHE, topic, resume_at_topic_sequence_number=41, resume_at_topic_sequence_page=page
            )
        )
        client.publish(CACHE, topic, "m51")
        items = take(sub, 11)
        sub.unsubscribe()
    assert [i.sequence_number for i in items] == list(range(41, 52))
    assert [i.value for i in items] == [f"m{n}" for n in range(41, 52)]


def test_fresh_subscription_starts_at_latest_message_and_stale_page_gets_current_items(
    emu: EmulatorServer,
) -> None:
    topic = unique("latest")
    with topic_client(emu.port) as client:
        for value in ("foo", "bar", "baz"):
            client.publish(CACHE, topic, value)
        fresh = subscription(client.subscribe(CACHE, topic))
        latest = take(fresh, 1)[0]
        fresh.unsubscribe()
        stale = subscription(
            client.subscribe(
                CACHE, topic, resume_at_topic_sequence_number=300, resume_at_topic_sequence_page=5
            )
        )
        replayed = take(stale, 3)
        stale.unsubscribe()
    assert (latest.value, latest.sequence_number) == ("baz", 3)
    assert [i.value for i in replayed] == ["foo", "bar", "baz"]


def test_fan_out_to_three_subscribers_is_identical(emu: EmulatorServer) -> None:
    topic = unique("fanout")
    with topic_client(emu.port) as client:
        subs = [subscription(client.subscribe(CACHE, topic)) for _ in range(3)]
        for i in range(200):
            client.publish(CACHE, topic, f"m{i}")
        seen = []
        for sub in subs:
            items = take(sub, 200)
            seen.append([(i.value, i.sequence_number, i.sequence_page) for i in items])
            sub.unsubscribe()
    assert seen[0] == seen[1] == seen[2]
    assert [n for _, n, _ in seen[0]] == list(range(1, 201))


def test_cache_set_get_delete_and_ttl_expiry_sync(emu: EmulatorServer) -> None:
    with cache_client(emu.port) as client:
        assert isinstance(client.set(CACHE, "k", "v"), CacheSet.Success)
        hit = client.get(CACHE, "k")
        assert isinstance(hit, CacheGet.Hit)
        assert hit.value_string == "v"
        assert isinstance(client.delete(CACHE, "k"), CacheDelete.Success)
        assert isinstance(client.get(CACHE, "k"), CacheGet.Miss)
        assert isinstance(client.delete(CACHE, "never-set"), CacheDelete.Success)
        client.set(CACHE, "short", b"\x00\x01", ttl=timedelta(milliseconds=300))
        assert isinstance(client.get(CACHE, "short"), CacheGet.Hit)
        time.sleep(0.5)
        assert isinstance(client.get(CACHE, "short"), CacheGet.Miss)


def test_cache_set_get_delete_and_ttl_expiry_async(emu: EmulatorServer) -> None:
    async def scenario() -> list[object]:
        async with cache_client_async(emu.port) as client:
            await client.set(CACHE, "ak", "v", ttl=timedelta(milliseconds=300))
            results: list[object] = [await client.get(CACHE, "ak")]
            await asyncio.sleep(0.5)
            results.append(await client.get(CACHE, "ak"))
            await client.set(CACHE, "ak2", "w")
            await client.delete(CACHE, "ak2")
            results.append(await client.get(CACHE, "ak2"))
            return results

    hit, expired, deleted = run(scenario())
    assert isinstance(hit, CacheGet.Hit)
    assert hit.value_string == "v"
    assert isinstance(expired, CacheGet.Miss)
    assert isinstance(deleted, CacheGet.Miss)


def test_control_plane_and_unknown_cache_errors_as_the_sdk_maps_them(emu: EmulatorServer) -> None:
    name = unique("ctl")
    missing = unique("missing")
    with cache_client(emu.port) as cache, topic_client(emu.port) as topics:
        assert isinstance(cache.create_cache(name), CreateCache.Success)
        assert isinstance(cache.create_cache(name), CreateCache.CacheAlreadyExists)
        listed = cache.list_caches()
        assert isinstance(listed, ListCaches.Success)
        assert name in {c.name for c in listed.caches}
        errors = [
            cache.get(missing, "k"),
            cache.set(missing, "k", "v"),
            cache.delete(missing, "k"),
            cache.delete_cache(missing),
            topics.publish(missing, "t", "v"),
            topics.subscribe(missing, "t"),
        ]
        assert isinstance(cache.delete_cache(name), DeleteCache.Success)
        after_delete = cache.get(name, "k")
    for error in [*errors, after_delete]:
        assert error.error_code is MomentoErrorCode.NOT_FOUND_ERROR, error  # type: ignore[attr-defined]
    assert isinstance(errors[5], TopicSubscribe.Error)


def test_oversized_messages_are_limit_exceeded(emu: EmulatorServer) -> None:
    with topic_client(emu.port) as topics, cache_client(emu.port) as cache:
        too_big = topics.publish(CACHE, unique("big"), "x" * 5000)
        fits = topics.publish(CACHE, unique("big"), "x" * 4000)
        big_item = cache.set(CACHE, "big", b"x" * (5 * 1024 * 1024 + 1))
        ok_item = cache.set(CACHE, "ok", b"x" * 4_000_000)
    assert isinstance(too_big, TopicPublish.Error)
    assert too_big.error_code is MomentoErrorCode.LIMIT_EXCEEDED_ERROR
    assert isinstance(fits, TopicPublish.Success)
    assert isinstance(big_item, CacheSet.Error)
    assert big_item.error_code is MomentoErrorCode.LIMIT_EXCEEDED_ERROR
    assert isinstance(ok_item, CacheSet.Success)


def _raw_stream(port: int, topic: str, seq: int = 0, page: int = 0) -> tuple[grpc.Channel, object]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    request = pb._SubscriptionRequest(
        cache_name=CACHE, topic=topic, resume_at_topic_sequence_number=seq, sequence_page=page
    )
    return channel, pb_grpc.PubsubStub(channel).Subscribe(request, timeout=20)


def test_wire_heartbeat_first_and_discontinuity_when_resume_is_too_old() -> None:
    with EmulatorServer(port=0, admin_port=None, retain=5) as server:
        server.create_cache(CACHE)
        topic = server.store.topic(CACHE, "wire")
        for i in range(20):
            topic.publish(pb._TopicValue(text=f"m{i}"))
        channel, stream = _raw_stream(server.port, "wire", seq=3, page=topic.page)
        with channel:
            kinds = [next(stream) for _ in range(7)]  # type: ignore[call-overload]
            stream.cancel()  # type: ignore[attr-defined]
    assert kinds[0].WhichOneof("kind") == "heartbeat"
    gap = kinds[1].discontinuity
    assert (gap.last_topic_sequence, gap.new_topic_sequence) == (2, 16)
    assert gap.new_sequence_page == topic.page
    assert [k.item.topic_sequence_number for k in kinds[2:]] == [16, 17, 18, 19, 20]


def test_slow_subscriber_overflow_gets_a_discontinuity_and_idle_reset_changes_page() -> None:
    with EmulatorServer(port=0, admin_port=None, subscriber_queue=10, idle_reset_s=1) as server:
        server.create_cache(CACHE)
        topic = server.store.topic(CACHE, "slow")
        mailbox = topic.attach(0, 0, capacity=10)
        for i in range(30):
            topic.publish(pb._TopicValue(text=f"m{i}"))
        first = mailbox.take(0)
        topic.publish(pb._TopicValue(text="late"))
        second = mailbox.take(0)
        old_page = topic.page
        topic.detach(mailbox)
        time.sleep(1.2)
        _, published = server.store.publish(CACHE, "slow", pb._TopicValue(text="after-idle"))
    assert first is not None
    assert len(first) == 10
    assert second is not None
    assert second[0].WhichOneof("kind") == "discontinuity"
    gap = second[0].discontinuity
    assert (gap.last_topic_sequence, gap.new_topic_sequence) == (10, 31)
    assert published is not None
    assert published.sequence_number == 1
    assert published.sequence_page != old_page


@pytest.mark.timeout(60)
def test_emulator_process_serves_the_sdk_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.emulator",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--http-port",
            "0",
            "--cache",
            CACHE,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        match = re.search(r"grpc=127\.0\.0\.1:(\d+) admin=(\S+) http=(\S+)", ready)
        assert match, ready
        port, admin, http = int(match.group(1)), match.group(2), match.group(3)
        assert httpx.get(f"{admin}/healthz", timeout=5).json()["ok"] is True
        put = httpx.put(
            f"{http}/cache/{CACHE}",
            params={"key": "from-http", "ttl_seconds": "60"},
            headers={"Authorization": "any"},
            content=b"hello",
            timeout=5,
        )
        assert put.status_code == 204, put.text
        topic = unique("process")
        with topic_client(port) as topics, cache_client(port) as cache:
            sub = subscription(topics.subscribe(CACHE, topic))
            for i in range(10):
                topics.publish(CACHE, topic, f"p{i}")
            items = take(sub, 10)
            sub.unsubscribe()
            cache.set(CACHE, "k", "v")
            got = cache.get(CACHE, "k")
            from_http = cache.get(CACHE, "from-http")
        assert isinstance(from_http, CacheGet.Hit)
        assert from_http.value_bytes == b"hello"
        assert [i.sequence_number for i in items] == list(range(1, 11))
        assert isinstance(got, CacheGet.Hit)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_command_help_documents_every_option() -> None:
    result = CliRunner().invoke(emulator_command, ["--help"])
    assert result.exit_code == 0, result.output
    for param in emulator_command.params:
        if param.name == "help":
            continue
        assert param.opts[0] in result.output
        assert getattr(param, "help", None), f"{param.opts[0]} has no help text"


def test_sweep_retires_idle_topics_and_late_users_get_the_new_incarnation() -> None:
    now = [1000.0]
    store = Store(TopicSettings(retain=10, fresh_replay=1, idle_reset_s=60), clock=lambda: now[0])
    store.create_cache(CACHE)
    _, first = store.publish(CACHE, "t", pb._TopicValue(text="a"))
    stale = store.topic(CACHE, "t")
    now[0] += 61
    store.sweep()
    with pytest.raises(TopicRetired):
        stale.publish(pb._TopicValue(text="lost?"))
    _, second = store.publish(CACHE, "t", pb._TopicValue(text="b"))
    assert first is not None
    assert second is not None
    assert second.sequence_number == 1
    assert second.sequence_page != first.sequence_page
