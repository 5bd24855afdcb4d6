"""Group commit against the real broker: the batch wait grows while batches wait in the queue."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

import redis

from pipeline.ingest.group_commit import Backlog, GroupCommitter
from pipeline.ingest.transports import RedisPush
from pipeline.workflows import backpressure


async def send_spaced(url: str, key: str, count: int, max_wait_s: float) -> None:
    """Submit ``count`` items 3 ms apart (nobody consumes the queue, so it only grows)."""
    push = RedisPush(url, key, encode=lambda items: ("id", json.dumps(list(items)).encode()))
    committer = GroupCommitter(push, wait_s=0.002, max_wait_s=max_wait_s)
    await committer.start()
    requests = []
    for i in range(count):
        requests.append(asyncio.create_task(committer.submit(i)))
        await asyncio.sleep(0.003)
    await asyncio.gather(*requests)
    await committer.stop()


def batches(url: str, count: int, max_wait_s: float) -> list[list[int]]:
    key = f"group-commit-{uuid.uuid4().hex}"
    asyncio.run(send_spaced(url, key, count, max_wait_s))
    client = redis.Redis.from_url(url)
    try:
        return [json.loads(raw) for raw in reversed(client.lrange(key, 0, -1))]
    finally:
        client.delete(key)
        client.close()


def test_batches_grow_while_the_queue_is_behind_and_lose_nothing(redis_url: str) -> None:
    fixed = batches(redis_url, 60, max_wait_s=0.002)
    adaptive = batches(redis_url, 60, max_wait_s=0.04)
    for sent in (fixed, adaptive):
        assert [item for batch in sent for item in batch] == list(range(60))
    assert len(adaptive[0]) <= 2  # an empty queue: the short wait
    assert max(len(batch) for batch in adaptive) >= 5
    assert len(adaptive) * 2 < len(fixed), (len(adaptive), len(fixed))


def test_a_late_driver_is_seen_by_the_next_push_and_a_timely_one_is_not(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.delete(backpressure.LAGGING)
    reporter = backpressure.LagReporter(redis_url)
    key = f"group-commit-{uuid.uuid4().hex}"

    async def pushes() -> list[Backlog]:
        push = RedisPush(redis_url, key, lambda items: ("id", json.dumps(list(items)).encode()))
        just_now = datetime.now(UTC)
        assert not reporter.observe(just_now)
        found = [await push([1])]
        assert reporter.observe(just_now - timedelta(seconds=1))
        assert not reporter.observe(just_now - timedelta(seconds=1))  # once per REPORT_EVERY_S
        found.append(await push([2]))
        await push.aclose()
        return found

    try:
        assert asyncio.run(pushes()) == [Backlog(1, lagging=False), Backlog(2, lagging=True)]
        assert 0 < client.pttl(backpressure.LAGGING) <= backpressure.HOLD_MS  # it wears off
    finally:
        reporter.close()
        client.delete(backpressure.LAGGING, key)
        client.close()


def test_a_lag_report_to_a_dead_broker_costs_the_driver_little_and_is_not_retried_at_once() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()  # accepts connections, never answers: an unresponsive broker
        reporter = backpressure.LagReporter(f"redis://127.0.0.1:{sock.getsockname()[1]}/0")
        late = datetime.now(UTC) - timedelta(seconds=1)
        started = time.perf_counter()
        assert not reporter.observe(late)
        assert time.perf_counter() - started < 1.0  # a short timeout, not the usual seconds
        time.sleep(backpressure.REPORT_EVERY_S + 0.05)
        started = time.perf_counter()
        assert not reporter.observe(late)  # quiet for a while after a failure: no second wait
        assert time.perf_counter() - started < 0.1
        reporter.close()
