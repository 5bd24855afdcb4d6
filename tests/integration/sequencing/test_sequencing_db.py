"""Sequencing end to end: webhooks through the real receiver, broker and workers into Postgres.

Each lane (topic) posts a pattern that mimics Momento's faults: numbers dropped, deliveries
duplicated, deliveries reordered within blocks, and a reset after an idle period (numbering back
at 1, event times jumping forward). A lane waits until each post is sequenced before the next,
so the arrival order (and with it every event's classification) is the injected one, however
many workers share the work; lanes run in parallel, and a burst topic is posted without waiting.
The expected outcome is computed here from the injected pattern, not with the code under test.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import text

from pipeline.aggregation.rollups import rollup
from pipeline.aggregation.stats import TopicStats, gather_stats
from pipeline.config import Settings
from pipeline.db import get_engine, session_scope
from pipeline.ingest.signing import sign
from pipeline.models import Base
from pipeline.sequencing.store import policy_from, tick
from tests.conftest import TEST_SECRET, ReceiverServer, WorkerProcess, wait_for

REORDER_WINDOW_S = 0.5
WORKER_ENV = {"PIPELINE_REORDER_WINDOW_S": str(REORDER_WINDOW_S)}
LANES = ("lane-a", "lane-b", "lane-c")
BURST = "burst"
# Per epoch: (how many numbers were published, which were dropped, which were delivered twice).
EPOCHS = (
    (30, {4, 11, 12, 20}, {7, 15}),
    (20, {5, 6}, {3}),
)
IDLE_MS = 3_000  # event time between the epochs (the reset idle threshold is 1 s)
BURST_COUNT, BURST_DROPPED, BURST_DUPLICATED = 150, {40, 41, 100}, {10, 120}


@dataclass(frozen=True)
class Post:
    """One webhook as Momento would deliver it."""

    topic: str
    epoch: int
    seq: int
    event_ms: int

    def body(self) -> bytes:
        return json.dumps(
            {
                "cache": "chat",
                "topic": self.topic,
                "event_timestamp": self.event_ms,
                "publish_timestamp": self.event_ms + 2,
                "topic_sequence_number": self.seq,
                "token_id": "",
                "text": f"e{self.epoch}-{self.seq}",
            }
        ).encode()


def lane_posts(topic: str, base_ms: int) -> list[Post]:
    """Drop, reorder within blocks of 5, duplicate: the epochs of one lane, in delivery order."""
    rng = random.Random(topic)
    posts: list[Post] = []
    start = base_ms
    for epoch, (count, dropped, duplicated) in enumerate(EPOCHS, start=1):
        kept = [n for n in range(1, count + 1) if n not in dropped]
        for i in range(0, len(kept), 5):
            block = kept[i : i + 5]
            rng.shuffle(block)
            block += [n for n in block if n in duplicated]
            posts += [Post(topic, epoch, n, start + n * 20) for n in block]
        start += count * 20 + IDLE_MS
    return posts


def expected_arrivals(posts: list[Post]) -> Counter[tuple[str, int, str]]:
    """(topic, epoch, arrival) counts of the stored events, derived from the delivery order."""
    highest: dict[tuple[str, int], int] = {}
    seen: set[tuple[str, int, int]] = set()
    counts: Counter[tuple[str, int, str]] = Counter()
    for p in posts:
        if (p.topic, p.epoch, p.seq) in seen:
            continue  # a duplicate delivery: recorded, not stored
        seen.add((p.topic, p.epoch, p.seq))
        top = highest.get((p.topic, p.epoch))
        kind = "reset" if top is None and p.epoch > 1 else "in_order"
        if top is not None and p.seq < top:
            kind = "late"
        highest[(p.topic, p.epoch)] = max(top or 0, p.seq)
        counts[(p.topic, p.epoch, kind)] += 1
    return counts


def received(settings: Settings, topic: str) -> int:
    """Deliveries the sequencer has seen for ``topic`` (duplicates included)."""
    with get_engine(settings).connect() as conn:
        value = conn.execute(
            text(
                "SELECT (state -> 'counters' ->> 'received')::int FROM topic_cursors"
                " WHERE cache = 'chat' AND topic = :topic"
            ),
            {"topic": topic},
        ).scalar()
    return int(value or 0)


def post(client: httpx.Client, one: Post) -> None:
    body = one.body()
    headers = {"content-type": "application/json", "momento-signature": sign(body, TEST_SECRET)}
    response = client.post("/webhooks/momento", content=body, headers=headers)
    assert response.status_code == 204, response.text


def run_lane(settings: Settings, url: str, posts: list[Post], errors: list[BaseException]) -> None:
    """Post one at a time, each after the previous was sequenced; pause (idle) between epochs."""
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            for n, one in enumerate(posts, start=1):
                if n > 1 and one.epoch != posts[n - 2].epoch:
                    time.sleep(1.0)
                post(client, one)
                topic = one.topic
                assert wait_for(lambda n=n, t=topic: received(settings, t) >= n, 10, 0.005), one
    except BaseException as exc:
        errors.append(exc)


def run_burst(url: str, posts: list[Post], errors: list[BaseException]) -> None:
    """Post everything at once over 16 connections: arrival order is up to the machinery."""
    try:
        todo = iter(posts)
        lock = threading.Lock()

        def lane() -> None:
            with httpx.Client(base_url=url, timeout=10) as client:
                while True:
                    with lock:
                        one = next(todo, None)
                    if one is None:
                        return
                    post(client, one)

        threads = [threading.Thread(target=lane) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except BaseException as exc:
        errors.append(exc)


def burst_posts(base_ms: int) -> list[Post]:
    kept = [n for n in range(1, BURST_COUNT + 1) if n not in BURST_DROPPED]
    numbers = kept + sorted(BURST_DUPLICATED)
    return [Post(BURST, 1, n, base_ms + n) for n in numbers]


@dataclass
class Outcome:
    """What the database says after one run."""

    arrivals: Counter[tuple[str, int, str]]
    lost: set[tuple[str, int, int]]
    stats: dict[str, TopicStats]


def play(settings: Settings, receiver: ReceiverServer) -> tuple[Outcome, list[Post]]:
    """Post every lane and the burst, let the reorder window pass, roll up, read back."""
    base_ms = int(time.time() * 1000) - 20_000
    lanes = {topic: lane_posts(topic, base_ms) for topic in LANES}
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=run_lane, args=(settings, receiver.url, posts, errors))
        for posts in lanes.values()
    ]
    burst = burst_posts(base_ms)
    threads.append(threading.Thread(target=run_burst, args=(receiver.url, burst, errors)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert wait_for(lambda: received(settings, BURST) == len(burst), 20)
    time.sleep(REORDER_WINDOW_S + 0.1)
    quick = settings.model_copy(update={"pipeline_reorder_window_s": REORDER_WINDOW_S})
    with session_scope(settings) as session:
        tick(session, policy_from(quick))  # declares the gaps no later delivery declared
    engine = get_engine(settings)
    rollup(engine, settings.pipeline_rollup_window_s)
    now = datetime.now(UTC)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT topic, epoch, arrival, count(*) FROM events GROUP BY 1, 2, 3")
        )
        arrivals = Counter({(r[0], r[1], r[2]): int(r[3]) for r in rows})
        ranges = conn.execute(text("SELECT topic, epoch, first_seq, last_seq FROM lost_ranges"))
        lost = {(t, e, n) for t, e, first, last in ranges for n in range(first, last + 1)}
    window_s = settings.pipeline_rollup_window_s
    found = gather_stats(
        engine, window_s, since=now - timedelta(hours=1), until=now + timedelta(hours=1)
    )
    return Outcome(arrivals, lost, {s.topic: s for s in found}), [
        p for ps in lanes.values() for p in ps
    ]


def check_injected(outcome: Outcome, lane_deliveries: list[Post]) -> None:
    """The database holds exactly what the injected faults imply."""
    lanes_expected = expected_arrivals(lane_deliveries)
    assert {k: v for k, v in outcome.arrivals.items() if k[0] != BURST} == lanes_expected
    dropped = {(t, e, n) for t in LANES for e, (_, d, _) in enumerate(EPOCHS, 1) for n in d}
    dropped |= {(BURST, 1, n) for n in BURST_DROPPED}
    assert outcome.lost == dropped
    for topic in LANES:
        stats = outcome.stats[topic]
        late = sum(v for (t, _, kind), v in lanes_expected.items() if t == topic and kind == "late")
        assert stats.events == sum(c - len(d) for c, d, _ in EPOCHS)
        assert (stats.lost, stats.gaps, stats.resets) == (6, 4, 1)
        assert stats.duplicates == sum(len(dups) for *_, dups in EPOCHS)
        assert stats.out_of_order == late
        assert [(r.epoch, r.label()) for r in stats.lost_ranges] == [
            (1, "4"),
            (1, "11-12"),
            (1, "20"),
            (2, "5-6"),
        ]
    burst = outcome.stats[BURST]
    assert (burst.events, burst.lost, burst.gaps) == (BURST_COUNT - 3, 3, 2)
    assert (burst.duplicates, burst.resets) == (len(BURST_DUPLICATED), 0)
    assert sum(v for (t, e, _), v in outcome.arrivals.items() if t == BURST and e == 1) == 147


def truncate(settings: Settings) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with get_engine(settings).begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def test_faults_end_up_in_stats_exactly_and_three_workers_agree_with_one(
    db: Settings,
    receiver_factory: Callable[..., ReceiverServer],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    receiver = receiver_factory()
    single = worker_factory("seq-solo", "-c", "1", "-Q", "ingest", env=WORKER_ENV)
    one, deliveries = play(db, receiver)
    check_injected(one, deliveries)
    single.stop()
    truncate(db)
    for n in range(3):
        worker_factory(f"seq-{n}", "-c", "1", "-Q", "ingest", env=WORKER_ENV)
    three, deliveries_again = play(db, receiver)
    assert [(p.topic, p.epoch, p.seq) for p in deliveries_again] == [
        (p.topic, p.epoch, p.seq) for p in deliveries
    ]
    check_injected(three, deliveries)
    lanes = [key for key in one.arrivals if key[0] != BURST]
    assert {k: three.arrivals[k] for k in lanes} == {k: one.arrivals[k] for k in lanes}
    assert three.lost == one.lost
    assert {t: comparable(s) for t, s in three.stats.items()} == {
        t: comparable(s) for t, s in one.stats.items()
    }


def comparable(stats: TopicStats) -> tuple[Any, ...]:
    """Totals that do not depend on when the run happened (the burst's late count does)."""
    return (
        stats.events,
        stats.bytes,
        stats.lost,
        stats.gaps,
        stats.resets,
        stats.duplicates,
        stats.out_of_order if stats.topic != BURST else None,
        [(r.epoch, r.first, r.last) for r in stats.lost_ranges],
    )
