"""`pipeline demo`: the whole pipeline plus traffic from the seed scenarios, then a summary.

Publishes with the official SDK to the inbound topics of the sample routes (uppercase relay, chat
moderation, weather cache, FX rates and orders), posts the weather stations' change records
(``demo_changes``), listens on their outbound topics with resilient
subscriptions, waits until every event is stored and every expected result has come back, and
prints what happened: events in, stored, lost, duplicates, published out, latency.

Every number counts this run only (``pipeline.cli.demo_run``): a rerun on the same data folder
neither adds the earlier runs' rows nor passes its checks on them.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import click

from pipeline.cli.demo_changes import run_change_demo
from pipeline.cli.demo_run import DemoRun, RunCounts, aligned
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
# Weather announcements carry only the location and temperatures, not the run's tag.
UNTAGGED = {("weather", "changes")}
CITIES = ("Paris", "Lagos", "Osaka")
SUBSCRIBED = "pipeline listen: weather/observations"


@dataclass(frozen=True)
class Publish:
    """One message the demo publishes."""

    cache: str
    topic: str
    text: str


def relay_text(i: int, tag: str) -> str:
    """The ``i``-th message of the uppercase relay."""
    return f"hello momento {i} ({tag})"


def scenario_messages(count: int, tag: str) -> list[Publish]:
    """The seed scenarios' traffic, in publish order (``count`` relay messages, the rest scaled).

    Every message carries ``tag``, so this run's events can be told from earlier runs'.
    """
    messages = [Publish("demo", "topic 1", relay_text(i, tag)) for i in range(count)]
    chat = ["hi all", "what the heck is this", "darn, missed the bus", "see you at 6"]
    messages += [
        Publish("chat", "room-1", f"{chat[i % len(chat)]} ({tag})")
        for i in range(max(4, count // 4))
    ]
    for i in range(max(3, count // 8)):
        record = {"location": CITIES[i % 3], "temp_c": 15 + (i * 7) % 11 / 2, "run": tag}
        messages.append(Publish("weather", "observations", json.dumps(record)))
    for i, rate in enumerate((1.0831, 1.0842, 1.0850)):
        quote = {"pair": "EURUSD", "rate": rate, "i": i, "run": tag}
        messages.append(Publish("fx", "rates", json.dumps(quote)))
    for i in range(max(4, count // 10)):
        side, limit = ("buy", 1.09) if i % 2 == 0 else ("sell", 1.10)
        order = {"id": f"{tag}/o-{i}", "pair": "EURUSD", "side": side, "limit": limit}
        messages.append(Publish("fx", "orders", json.dumps(order)))
    return messages


@dataclass
class Listener:
    """Outbound subscriptions, read on background threads."""

    tag: str
    received: dict[tuple[str, str], list[tuple[float, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    gaps: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def listen(self, subscription: ResilientSubscription, key: tuple[str, str]) -> None:
        """Record each outbound message of this run with its arrival time until stopped."""
        while not self._stop.is_set():
            event = subscription.poll(0.2)
            if isinstance(event, Message):
                value = event.value if isinstance(event.value, str) else event.value.decode()
                if key in UNTAGGED or self.tag.upper() in value.upper():
                    self.received[key].append((time.perf_counter(), value))
            elif event is not None:
                self.gaps += 1

    def stop(self) -> None:
        """Stop the reader threads."""
        self._stop.set()
        for thread in self._threads:
            thread.join(5)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _inbound(messages: list[Publish]) -> list[tuple[str, str]]:
    return sorted({(m.cache, m.topic) for m in messages})


def run_demo(stack: Stack, count: int, rate_per_s: float, timeout_s: float) -> bool:
    """Drive the traffic and print the summary; True if every event was stored and relayed."""
    prepare_routes(stack, extra_topics=[("chat", "room-1")])
    start_listener(stack)
    settings = stack.settings
    run = DemoRun.begin(get_engine(settings))
    publisher = momento_client.topic_client(settings, timeout=momento_client.PUBLISH_TIMEOUT)
    reader = momento_client.topic_client(settings, max_subscriptions=len(OUTBOUND) + 1)
    listener = Listener(run.tag)
    subscriptions = []
    sent_at: dict[str, float] = {}
    messages = scenario_messages(count, run.tag)
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
        ok = _wait_until_done(stack, run, listener, messages, expected, timeout_s)
    finally:
        listener.stop()
        for sub in subscriptions:
            sub.close()
        momento_client.close_client(publisher)
        momento_client.close_client(reader)
    counts = run.counts(get_engine(settings), _inbound(messages))
    click.echo("")
    click.echo(summary_text(counts, listener, messages, count, sent_at))
    return run_change_demo(stack, timeout_s) and ok


def _wait_until_done(
    stack: Stack,
    run: DemoRun,
    listener: Listener,
    messages: list[Publish],
    expected: dict[tuple[str, str], int],
    timeout_s: float,
) -> bool:
    """Until this run's events are all stored, its results received and its outbox rows sent."""
    engine = get_engine(stack.settings)
    inbound = _inbound(messages)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = run.counts(engine, inbound)
        received = all(len(listener.received[key]) >= n for key, n in expected.items())
        if counts.stored >= len(messages) and received and counts.outbox_pending == 0:
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


def summary_text(
    counts: RunCounts,
    listener: Listener,
    messages: list[Publish],
    count: int,
    sent_at: dict[str, float],
) -> str:
    """The summary table: one label column, values aligned after it."""
    relayed = [json.loads(v)["text"] for _, v in listener.received[OUTBOUND[0]]]
    in_order = relayed == [relay_text(i, listener.tag).upper() for i in range(len(relayed))]
    rows: list[tuple[str, str]] = [
        ("events published", str(len(messages))),
        ("events stored", str(counts.stored)),
        ("  by webhook", str(counts.by_webhook)),
        ("  by subscription", f"{counts.by_subscription:<6}({SUBSCRIBED})"),
        ("lost (per sequencer)", str(counts.lost)),
        ("duplicates", str(counts.duplicates)),
        ("out of order", str(counts.out_of_order)),
        ("outbox rows sent", str(counts.outbox_sent)),
    ]
    rows += [
        (
            f"received on {cache}/{topic}",
            f"{len(listener.received[(cache, topic)])}"
            + (
                "   (while this run listened; its messages carry no run tag)"
                if (cache, topic) in UNTAGGED
                else ""
            ),
        )
        for cache, topic in OUTBOUND
    ]
    rows.append(("relay in sequence order", f"{in_order} ({len(relayed)}/{count})"))
    relay = list(_relay_latencies(listener, sent_at))
    if relay:
        rows.append(
            (
                "publish -> outbound",
                f"p50 {_percentile(relay, 50):.1f} ms   p99 {_percentile(relay, 99):.1f} ms"
                "   (SDK publish to SDK subscriber)",
            )
        )
    if counts.receive_p50_ms is not None:
        rows.append(("event -> received", f"p50 {counts.receive_p50_ms:.1f} ms"))
    return aligned("demo summary (this run)", rows)
