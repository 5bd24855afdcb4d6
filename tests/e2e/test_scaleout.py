"""Scale-out at test scale: 3 `pipeline worker` processes sharing only the broker and Postgres.

Signed webhooks for 10 topics (with exact duplicate deliveries and reordering) go to the real
receiver; an ordered route relays each topic to ``{topic}-out`` on the local Momento server. Every
distinct event must be stored once and every outbound topic must arrive complete, in order.
benchmarks/scaleout_bench.py is the same shape at 50,000 events with a throughput curve.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from pipeline.config import Settings
from pipeline.emulator import EmulatorServer
from pipeline.outbound.subscriptions import Message
from tests.conftest import ReceiverServer, WorkerProcess, count_rows, signed_webhook, wait_for
from tests.e2e.workflow_support import Stack, Subscriber, subscribed
from tests.integration.emulator_support import unique

TOPICS = 10
PER_TOPIC = 120
DUPLICATE_FRACTION = 0.05
REORDER_WINDOW = 50  # deliveries shuffled within consecutive groups of this size


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, admin_port=None, idle_reset_s=0, seed=11).start()
    yield server
    server.stop()


def deliveries(cache: str, rng: random.Random) -> list[tuple[bytes, dict[str, str]]]:
    """Signed bodies, interleaved across topics, ~5% delivered twice, shuffled within windows."""
    base = int(time.time() * 1000) - PER_TOPIC
    originals = [
        signed_webhook(seq, cache=cache, topic=f"t-{t}", text_value=f"m t-{t} {seq}",
                       publish_ms=base + seq)
        for seq in range(1, PER_TOPIC + 1)
        for t in range(TOPICS)
    ]  # fmt: skip
    out: list[tuple[bytes, dict[str, str]]] = []
    for delivery in originals:
        out.append(delivery)
        if rng.random() < DUPLICATE_FRACTION:
            out.append(delivery)
    for start in range(0, len(out), REORDER_WINDOW):
        window = out[start : start + REORDER_WINDOW]
        rng.shuffle(window)
        out[start : start + REORDER_WINDOW] = window
    return out


async def post_all(url: str, items: list[tuple[bytes, dict[str, str]]], lanes: int) -> list[int]:
    """POST every delivery over ``lanes`` keep-alive connections; return the status codes."""
    todo = iter(items)
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=lanes, max_keepalive_connections=lanes)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def lane() -> None:
            for body, headers in todo:
                response = await client.post("/webhooks/momento", content=body, headers=headers)
                statuses.append(response.status_code)

        await asyncio.gather(*(lane() for _ in range(lanes)))
    return statuses


@pytest.mark.timeout(240)
def test_three_worker_processes_store_each_event_once_and_relay_every_topic_in_order(
    db: Settings,
    emu: EmulatorServer,
    tmp_path: Path,
    receiver_factory: Callable[..., ReceiverServer],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    cache = unique("scale")
    emu.create_cache(cache)
    routes = tmp_path / "routes.toml"
    routes.write_text(
        f"""
[[routes]]
name = "scale"
cache = "{cache}"
topic = "t-*"
workflow = "tasks.examples:uppercase"
ordered = true
publish = {{ cache = "{{cache}}", topic = "{{topic}}-out" }}
"""
    )
    stack = Stack(emu, receiver_factory(), routes, worker_factory)
    # Nothing is lost here, so no gap waits out the window; but on a loaded machine the posting
    # lanes stretch a 50-delivery shuffle past the default 2 s of receive time, and a number
    # received that late is declared lost and runs out of order (what the window means).
    stack.env["PIPELINE_REORDER_WINDOW_S"] = "30"
    stack.workers(3, "-c", "2")
    items = deliveries(cache, random.Random(7))
    distinct = TOPICS * PER_TOPIC
    assert len(items) > distinct  # duplicates are in the mix

    with ExitStack() as subs:
        subscribers = {
            f"t-{t}": subs.enter_context(subscribed(emu, cache, f"t-{t}-out"))
            for t in range(TOPICS)
        }
        statuses = asyncio.run(post_all(stack.receiver.url, items, lanes=16))
        assert {s for s in statuses if not 200 <= s < 300} == set(), "rejected webhooks"

        def stored() -> int:
            return count_rows(db, f"SELECT count(*) FROM events WHERE cache = '{cache}'")

        assert wait_for(lambda: stored() >= distinct, 90, 0.25), f"{stored()} of {distinct}"
        received = collect_all(subscribers, PER_TOPIC, timeout_s=120)

    assert stored() == distinct
    assert (
        count_rows(
            db,
            "SELECT count(*) FROM (SELECT DISTINCT topic, topic_sequence_number FROM events "
            f"WHERE cache = '{cache}') d",
        )
        == distinct
    )
    for topic, texts in received.items():
        seqs = [int(text.rsplit(" ", 1)[1]) for text in texts]
        assert texts[0].startswith(f"M {topic.upper()} "), texts[0]
        assert seqs == list(range(1, PER_TOPIC + 1)), f"{topic}: {out_of_order(seqs)}"
    assert wait_for(
        lambda: count_rows(db, "SELECT count(*) FROM outbox WHERE status = 'sent'") == distinct,
        10,
    )
    assert count_rows(db, "SELECT count(*) FROM outbox") == distinct
    assert count_rows(db, "SELECT count(*) FROM lost_ranges") == 0


def collect_all(
    subscribers: dict[str, Subscriber], count: int, timeout_s: float
) -> dict[str, list[str]]:
    """Poll every subscription until each has ``count`` messages (then 1 s for extras)."""
    texts: dict[str, list[str]] = {topic: [] for topic in subscribers}
    end = time.monotonic() + timeout_s
    settle_end = None
    while time.monotonic() < (settle_end or end):
        for topic, subscriber in subscribers.items():
            while (event := subscriber.sub.poll(0.01)) is not None:
                if isinstance(event, Message):
                    texts[topic].append(json.loads(str(event.value))["text"])
        if settle_end is None and all(len(t) >= count for t in texts.values()):
            settle_end = time.monotonic() + 1.0
    return texts


def out_of_order(seqs: list[int]) -> str:
    """A short description of what is wrong with a received sequence."""
    missing = sorted(set(range(1, PER_TOPIC + 1)) - set(seqs))
    backwards = [(a, b) for a, b in itertools.pairwise(seqs) if b <= a]
    return f"{len(seqs)} received, missing {missing[:10]}, backwards {backwards[:10]}"
