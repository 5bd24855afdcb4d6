"""The emulator's generated traffic (admin ``.../generate``) reaches real SDK subscribers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pipeline.emulator import EmulatorServer
from tests.integration.emulator_support import run, subscription, take_async, topic_client_async

CACHE = "generate-tests"


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, admin_port=0, idle_reset_s=0).start()
    server.create_cache(CACHE)
    yield server
    server.stop()


def _post(emu: EmulatorServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{emu.admin_url}{path}", json=body, timeout=30)


def test_generated_round_robin_messages_reach_sdk_subscribers_in_order(
    emu: EmulatorServer,
) -> None:
    topics = ["rr-a", "rr-b", "rr-c"]

    async def scenario() -> tuple[httpx.Response, list[list[Any]], float]:
        client = topic_client_async(emu.port)
        try:
            subs = [subscription(await client.subscribe(CACHE, t)) for t in topics]
            before_ms = time.time() * 1000
            body = {"topics": topics, "count": 300, "rate_per_s": 3000, "size": 120}
            answer = await asyncio.to_thread(_post, emu, f"/topics/{CACHE}/generate", body)
            received = [await take_async(sub, 100, deadline_s=20) for sub in subs]
            for sub in subs:
                sub.unsubscribe()
            return answer, received, before_ms
        finally:
            await client.close()

    answer, received, before_ms = run(scenario())
    assert answer.status_code == 200, answer.text
    assert answer.json()["published"] == 300
    assert answer.json()["topics"] == 3
    for offset, items in enumerate(received):
        assert [item.sequence_number for item in items] == list(range(1, 101))
        assert len({item.sequence_page for item in items}) == 1
        bodies = [json.loads(item.value) for item in items]
        assert [b["i"] for b in bodies] == list(range(offset, 300, 3))
        assert all(len(item.value) == 120 for item in items)
        times = [b["t"] for b in bodies]
        assert times == sorted(times)
        assert before_ms <= times[0] <= time.time() * 1000


def test_one_topic_generate_is_paced_to_the_requested_rate(emu: EmulatorServer) -> None:
    async def scenario() -> tuple[httpx.Response, list[Any]]:
        client = topic_client_async(emu.port)
        try:
            sub = subscription(await client.subscribe(CACHE, "paced"))
            body = {"count": 50, "rate_per_s": 100, "size": 10}
            answer = await asyncio.to_thread(_post, emu, f"/topics/{CACHE}/paced/generate", body)
            items = await take_async(sub, 50, deadline_s=20)
            sub.unsubscribe()
            return answer, items
        finally:
            await client.close()

    answer, items = run(scenario())
    assert answer.status_code == 200, answer.text
    assert 0.45 <= answer.json()["seconds"] < 5
    assert [item.sequence_number for item in items] == list(range(1, 51))
    # too small to pad: the index and time alone
    assert [json.loads(item.value)["i"] for item in items] == list(range(50))


def test_bad_generate_requests_are_rejected_and_publish_nothing(emu: EmulatorServer) -> None:
    path = f"/topics/{CACHE}/rejected/generate"
    too_long = _post(emu, path, {"count": 1000, "rate_per_s": 1})
    too_big = _post(emu, path, {"count": 1, "rate_per_s": 1, "size": 5000})
    unknown = _post(emu, path, {"count": 1, "rate_per_s": 1, "colour": "red"})
    no_cache = _post(emu, "/topics/no-such-cache/t/generate", {"count": 1, "rate_per_s": 1})
    no_topics = _post(emu, f"/topics/{CACHE}/generate", {"count": 1, "rate_per_s": 1})
    assert [r.status_code for r in (too_long, too_big, unknown, no_topics)] == [400] * 4
    assert too_long.json()["error"] == "invalid_generate"
    assert "600" in too_long.json()["detail"]
    assert "5000" in too_big.json()["detail"]
    assert no_cache.status_code == 404
    assert emu.store.find_topic(CACHE, "rejected") is None
