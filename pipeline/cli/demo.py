"""`pipeline demo`: the whole pipeline plus traffic from the seed scenarios, then a summary.

Publishes with the official SDK to the inbound topics of the sample routes (uppercase relay, chat
moderation, weather cache, FX rates and orders), posts the weather stations' change records
(``demo_changes``), listens on their outbound topics with resilient
subscriptions, waits until every event is stored and every expected result has come back, and
prints what happened: events in, stored, lost, duplicates, published out, latency.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import click
from sqlalchemy import text

from pipeline.cli.demo_changes import run_change_demo
from pipeline.cli.stack import Stack, prepare_routes, start_listener
from pipeline.db import get_engine
from pipeline.outbound import momento_client
from pipeline.outbound.subscriptions import Message, ResilientSubscription

OUTBOUND = [
    ("demo", "topic 2"),
    ("chat", "moderated-room-1"),
    ("weather", "changes"),
    ("fx", "order-results"),
]
CITIES = ("Paris", "Lagos", "Osaka")


@dataclass(frozen=True)
class Publish:
    """One message the demo publishes."""

    cache: str
    topic: str
    text: str


def scenario_messages(count: int) -> list[Publish]:
    """The seed scenarios' traffic, in publish order (``count`` relay messages, the rest scaled)."""
    messages = [Publish("demo", "topic 1", f"hello momento {i}") for i in range(count)]
    chat = ["hi all", "what the heck is this", "darn, missed the bus", "see you at 6"]
    messages += [Publish("chat", "room-1", chat[i % len(chat)]) for i in range(max(4, count // 4))]
    for i in range(max(3, count // 8)):
        record = {"location": CITIES[i % 3], "temp_c": 15 + (i * 7) % 11 / 2}
        messages.append(Publish("weather", "observations", json.dumps(record)))
    for i, rate in enumerate((1.0831, 1.0842, 1.0850)):
        messages.append(
            Publish("fx", "rates", json.dumps({"pair": "EURUSD", "rate": rate, "i": i}))
        )
    for i in range(max(4, count // 10)):
        side, limit = ("buy", 1.09) if i % 2 == 0 else ("sell", 1.10)
        order = {"id": f"o-{i}", "pair": "EURUSD", "side": side, "limit": limit}
        messages.append(Publish("fx", "orders", json.dumps(order)))
    return messages


@dataclass
class Listener:
    """Outbound subscriptions, read on background threads."""

    received: dict[tuple[str, str], list[tuple[float, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    gaps: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def listen(
        self, subscription: ResilientSubscription, key: tuple[str, str]
    ) -> None:
        """Record each outbound message with its arrival time until stopped."""
        while not self._stop.is_set():
            event = subscription.poll(0.2)
            if isinstance(event, Message):
                value = event.value if isinstance(event.value, str) else event.value.decode()
                self.received[key].append((time.perf_counter(), value))
            elif event is not None:
                self.gaps += 1

    def stop(self) -> None:
        """Stop the reader threads."""
        self._stop.set()
        for thread in self._threads:
            thread.join(5)


def _count(stack: Stack, sql: str) -> int:
    with get_engine(stack.settings).connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_demo(stack: Stack, count: int, rate_per_s: float, timeout_s: float) -> bool:
    """Drive the traffic and print the summary; True if every event was stored and relayed."""
    prepare_routes(stack, extra_topics=[("chat", "room-1")])
    start_listener(stack)
    settings = stack.settings
    publisher = momento_client.topic_client(settings, timeout=momento_client.PUBLISH_TIMEOUT)
    reader = momento_client.topic_client(settings, max_subscriptions=len(OUTBOUND) + 1)
    listener = Listener()
    subscriptions = []
    started_at = datetime.now(UTC)
    sent_at: dict[str, float] = {}
    messages = scenario_messages(count)
    try:
        for key in OUTBOUND:
            sub = ResilientSubscription(reader, *key).start()
            subscriptions.append(sub)
            thread = threading.Thread(target=listener.listen, args=(sub, key), daemon=True)
            thread.start()
            listener._threads.append(thread)
        with click.progressbar(messages, label="publishing", show_pos=True) as bar:
            interval = 1.0 / rate_per_s
            next_at = time.perf_counter()
            for message in bar:
                next_at += interval
                time.sleep(max(0.0, next_at - time.perf_counter()))
                sent_at.setdefault(message.text.upper(), time.perf_counter())
                momento_client.publish(publisher, message.cache, message.topic, message.text)
        expected = {
            OUTBOUND[0]: count,
            OUTBOUND[1]: sum(m.topic == "room-1" for m in messages),
            OUTBOUND[3]: sum(m.topic == "orders" for m in messages),
        }
        ok = _wait_until_done(stack, listener, len(messages), expected, timeout_s)
    finally:
        listener.stop()
        for sub in subscriptions:
            sub.close()
        momento_client.close_client(publisher)
        momento_client.close_client(reader)
    _print_summary(stack, listener, messages, count, sent_at, started_at)
    return run_change_demo(stack, timeout_s) and ok


def _wait_until_done(
    stack: Stack,
    listener: Listener,
    published: int,
    expected: dict[tuple[str, str], int],
    timeout_s: float,
) -> bool:
    """Until every event is stored, every expected result received and the outbox is empty."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stored = _count(stack, "SELECT count(*) FROM events")
        pending = _count(stack, "SELECT count(*) FROM outbox WHERE status = 'pending'")
        received = all(len(listener.received[key]) >= n for key, n in expected.items())
        if stored >= published and received and pending == 0:
            time.sleep(1.0)  # a last look for stragglers on the unchecked topics
            return True
        time.sleep(0.5)
    return False


def _relay_latencies(listener: Listener, sent_at: dict[str, float]) -> Iterator[float]:
    for arrived, value in listener.received[OUTBOUND[0]]:
        body = json.loads(value)
        start = sent_at.get(body.get("text", ""))
        if start is not None:
            yield (arrived - start) * 1000


def _print_summary(
    stack: Stack,
    listener: Listener,
    messages: list[Publish],
    count: int,
    sent_at: dict[str, float],
    started_at: datetime,
) -> None:
    from pipeline.aggregation.retention import retention_cutoff
    from pipeline.aggregation.rollups import rollup
    from pipeline.aggregation.stats import gather_stats

    engine = get_engine(stack.settings)
    rollup(
        engine,
        stack.settings.pipeline_rollup_window_s,
        keep_after=retention_cutoff(stack.settings.pipeline_retention_days),
    )
    rows = gather_stats(
        engine,
        stack.settings.pipeline_rollup_window_s,
        since=started_at - timedelta(minutes=5),
        until=datetime.now(UTC) + timedelta(minutes=5),
    )
    relay = list(_relay_latencies(listener, sent_at))
    relayed = [json.loads(v)["text"] for _, v in listener.received[OUTBOUND[0]]]
    in_order = relayed == [f"HELLO MOMENTO {i}" for i in range(len(relayed))]
    out_sent = _count(stack, "SELECT count(*) FROM outbox WHERE status = 'sent'")
    click.echo("")
    click.echo("demo summary")
    click.echo(f"  events published        {len(messages)}")
    click.echo(f"  events stored           {_count(stack, 'SELECT count(*) FROM events')}")
    by_door = "SELECT count(*) FROM events WHERE source = '{}'"
    click.echo(
        f"    by webhook            {_count(stack, by_door.format('webhook'))}\n"
        f"    by subscription       {_count(stack, by_door.format('subscription'))}"
        "   (pipeline listen: weather/observations)"
    )
    click.echo(f"  lost (per sequencer)    {sum(r.lost for r in rows)}")
    click.echo(f"  duplicates              {sum(r.duplicates for r in rows)}")
    click.echo(f"  out of order            {sum(r.out_of_order for r in rows)}")
    click.echo(f"  outbox rows sent        {out_sent}")
    for key in OUTBOUND:
        click.echo(f"  received on {key[0]}/{key[1]:<18} {len(listener.received[key])}")
    click.echo(f"  relay in sequence order {in_order} ({len(relayed)}/{count})")
    if relay:
        click.echo(
            f"  publish -> outbound     p50 {_percentile(relay, 50):.1f} ms   "
            f"p99 {_percentile(relay, 99):.1f} ms   (SDK publish to SDK subscriber)"
        )
    receive = [r.receive_latency.p50_ms for r in rows if r.receive_latency.p50_ms is not None]
    if receive:
        click.echo(
            f"  event -> received p50   {statistics.median(receive):.1f} ms (median of topics)"
        )
