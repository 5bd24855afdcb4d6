"""Group commit spacing: while the workers are behind and requests come faster than one per
``interval_s``, batches are sent at most once per ``interval_s`` (``max_wait_s`` while the
workflow stage reports running late); a request that arrives after a quiet spell, in slow
traffic, or while the workers keep up is not held back."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Sequence
from typing import Any

from pipeline.ingest.group_commit import Backlog, GroupCommitter


class Recorder:
    """An async sender that keeps each batch and when it was sent (an empty broker queue)."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.sent_at: list[float] = []

    async def __call__(self, items: Sequence[Any]) -> Backlog:
        self.batches.append(list(items))
        self.sent_at.append(time.perf_counter())
        return Backlog(1)

    async def aclose(self) -> None:
        pass


class Backlogged(Recorder):
    """A sender whose broker queue reports ``depth`` batches (its own included), and the
    workflow stage running late if ``lagging``."""

    def __init__(self, depth: int, lagging: bool = False) -> None:
        super().__init__()
        self.depth = depth
        self.lagging = lagging

    async def __call__(self, items: Sequence[Any]) -> Backlog:
        await super().__call__(items)
        return Backlog(self.depth, self.lagging)


async def submit_spaced(committer: GroupCommitter, count: int, spacing_s: float) -> None:
    await committer.start()
    requests = []
    for i in range(count):
        requests.append(asyncio.create_task(committer.submit(i)))
        await asyncio.sleep(spacing_s)
    await asyncio.gather(*requests)
    await committer.stop()


def sent(interval_s: float, depth: int = 2, lagging: bool = False, count: int = 40) -> Recorder:
    """Batches of ``count`` requests 2 ms apart; ``depth`` 2: each send finds a batch waiting."""
    recorder = Backlogged(depth, lagging)
    committer = GroupCommitter(recorder, wait_s=0.001, max_wait_s=0.05, interval_s=interval_s)
    asyncio.run(submit_spaced(committer, count, 0.002))
    return recorder


def gaps_s(sent_at: Sequence[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(sent_at)]


def test_batches_are_spaced_by_the_interval_and_lose_nothing() -> None:
    unspaced, spaced = sent(0.0), sent(0.02)
    for recorder in (unspaced, spaced):
        assert [item for batch in recorder.batches for item in batch] == list(range(40))
    gaps = gaps_s(spaced.sent_at)
    # The first few requests set the pace (a moving average of their gaps); then every batch
    # waits out the interval. A sleep never ends early; 1 ms for timer granularity.
    assert min(gaps[4:]) >= 0.019, gaps
    assert len(spaced.batches) * 3 < len(unspaced.batches), (spaced.batches, unspaced.batches)


def test_a_lagging_workflow_stage_spaces_batches_by_the_longest_wait_even_with_an_empty_queue() -> (
    None
):
    lagging = sent(0.01, depth=1, lagging=True, count=150)  # an empty queue, a driver behind
    assert [item for batch in lagging.batches for item in batch] == list(range(150))
    # The first send learns of the lag; every batch after the next one waits out max_wait_s
    # (50 ms), not the 10 ms interval, nor nothing as an empty queue alone would allow.
    assert min(gaps_s(lagging.sent_at)[2:]) >= 0.049, gaps_s(lagging.sent_at)
    assert len(lagging.batches) <= 9, lagging.batches  # ~0.3 s: ~30 at the 10 ms interval


def test_a_sender_that_reports_no_backlog_is_spaced_by_the_longest_wait() -> None:
    batches: list[list[Any]] = []
    sent_at: list[float] = []

    def blocking_send(items: Sequence[Any]) -> None:  # Celery's producer: tells nothing
        batches.append(list(items))
        sent_at.append(time.perf_counter())

    committer = GroupCommitter(blocking_send, wait_s=0.001, max_wait_s=0.05, interval_s=0.01)
    asyncio.run(submit_spaced(committer, 150, 0.002))
    assert [item for batch in batches for item in batch] == list(range(150))
    gaps = gaps_s(sent_at)
    assert statistics.mean(gaps[4:]) >= 0.04, gaps  # 50 ms, not the 10 ms interval


def test_lag_spacing_is_off_with_spacing_turned_off() -> None:
    unspaced = sent(0.0, depth=1, lagging=True)
    assert len(unspaced.batches) > 30, unspaced.batches


def test_workers_that_keep_up_are_sent_every_request_at_once() -> None:
    keeping_up = sent(0.02, depth=1)  # every send finds the queue otherwise empty
    assert [item for batch in keeping_up.batches for item in batch] == list(range(40))
    assert len(keeping_up.batches) > 30, keeping_up.batches  # spaced, it would be ~6


def test_a_request_after_a_quiet_spell_waits_only_the_base_wait() -> None:
    async def run() -> float:
        committer = GroupCommitter(Recorder(), wait_s=0.001, interval_s=0.2)
        await committer.start()
        await committer.submit("first")
        await asyncio.sleep(0.25)  # longer than the interval: no batch is due to be spaced
        started = time.perf_counter()
        await committer.submit("second")
        elapsed = time.perf_counter() - started
        await committer.stop()
        return elapsed

    assert asyncio.run(run()) < 0.1  # not held until 0.2 s after the first batch


def second_request_s(depth: int) -> float:
    """How long a lone request takes to be sent after one batch went to a queue of ``depth``."""

    async def run() -> float:
        committer = GroupCommitter(Backlogged(depth), wait_s=0.1, max_wait_s=1.0)
        await committer.start()
        await committer.submit("first")
        started = time.perf_counter()
        await committer.submit("second")
        elapsed = time.perf_counter() - started
        await committer.stop()
        return elapsed

    return asyncio.run(run())


def test_an_idle_queue_sends_at_once_and_a_backlog_collects_longer() -> None:
    assert second_request_s(depth=1) < 0.05  # nothing waits in the queue: no 100 ms wait
    assert second_request_s(depth=3) >= 0.2  # two batches wait: 2 x 100 ms


def test_traffic_slower_than_the_interval_is_not_held_back() -> None:
    async def run() -> list[float]:
        committer = GroupCommitter(Backlogged(2), wait_s=0.001, interval_s=0.03)
        await committer.start()
        took = []
        for i in range(12):  # 10 and 90 ms apart in turn: one per 50 ms on average
            started = time.perf_counter()
            await committer.submit(i)
            took.append(time.perf_counter() - started)
            await asyncio.sleep((0.01 if i % 2 else 0.09) - took[-1])
        await committer.stop()
        return took

    took = asyncio.run(run())
    assert max(took) < 0.015, took  # spaced, each one 10 ms after another would wait ~20 ms
