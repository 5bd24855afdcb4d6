"""Routes and workflows end to end: SDK publish → webhook → receiver → workers → outbox → SDK.

Everything is real: the local Momento server (in a thread) with the official SDK on both ends,
the receiver, the broker, `pipeline worker` subprocesses and Postgres.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.emulator import EmulatorServer
from pipeline.outbound import momento_client as mc
from tests.conftest import ReceiverServer, WorkerProcess, count_rows, queued_messages, wait_for
from tests.e2e.workflow_support import Stack, beat, client_settings, subscribed
from tests.integration.emulator_support import unique


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, admin_port=None, idle_reset_s=0, seed=7).start()
    yield server
    server.stop()


def routes_file(path: Path, body: str) -> Path:
    target = path / "routes.toml"
    target.write_text(body)
    return target


def uppercase_routes(cache: str) -> str:
    return f"""
[[routes]]
name = "uppercase"
cache = "{cache}"
topic = "topic 1"
workflow = "tasks.examples:uppercase"
ordered = true
publish = {{ cache = "{{cache}}", topic = "topic 2" }}
"""


@pytest.fixture
def stack(
    db: Settings,
    emu: EmulatorServer,
    tmp_path: Path,
    receiver_factory: Callable[..., ReceiverServer],
    worker_factory: Callable[..., WorkerProcess],
) -> Stack:
    return Stack(emu, receiver_factory(), tmp_path / "routes.toml", worker_factory)


@pytest.mark.timeout(150)
def test_ordered_route_relays_in_sequence_order_despite_reordered_duplicated_deliveries(
    stack: Stack, emu: EmulatorServer
) -> None:
    cache = unique("relay")
    routes_file(stack.routes_path.parent, uppercase_routes(cache))
    stack.hook(cache, "topic 1")
    emu.set_faults(cache, "topic 1", reorder_window=5, duplicate=0.3)
    # Nothing is lost, so no gap waits out the window; a long one keeps a loaded machine from
    # stretching the reordering past it, which would turn it into a declared loss.
    stack.env["PIPELINE_REORDER_WINDOW_S"] = "30"
    stack.workers(3, "-c", "2")
    texts = [f"message {i}" for i in range(1, 61)]
    with subscribed(emu, cache, "topic 2") as subscriber:
        stack.publish(cache, "topic 1", texts, spacing_s=0.005)
        received = subscriber.collect(len(texts), timeout_s=60, settle_s=1.0)
    assert emu.webhook_stats(cache, "topic 1").duplicated > 0
    assert [m["text"] for m in received] == [t.upper() for t in texts]
    assert len({m["id"] for m in received}) == len(texts)


@pytest.mark.timeout(180)
def test_each_outbound_message_arrives_once_in_order_across_a_worker_sigkill(
    stack: Stack, emu: EmulatorServer
) -> None:
    cache = unique("crash")
    routes_file(stack.routes_path.parent, uppercase_routes(cache))
    stack.hook(cache, "topic 1")
    # The killed worker's unacknowledged messages are redelivered once the visibility timeout
    # (10 s in tests) has passed and a worker scans for them, as a restarted worker does at once.
    # A reorder window longer than that lets the sequencer wait for them instead of declaring
    # their numbers lost, so the order holds too.
    stack.env["PIPELINE_REORDER_WINDOW_S"] = "20"
    victim, *_ = stack.workers(3, "-c", "2")
    texts = [f"message {i}" for i in range(1, 151)]
    with beat(stack.worker_env()), subscribed(emu, cache, "topic 2") as subscriber:
        publisher = threading.Thread(
            target=stack.publish, args=(cache, "topic 1", texts), kwargs={"spacing_s": 0.01}
        )
        publisher.start()
        time.sleep(0.5)
        victim.kill()
        killed_at = time.monotonic()
        publisher.join(30)
        time.sleep(max(0.0, killed_at + 10.5 - time.monotonic()))
        stack.workers(1, "-c", "2")  # the supervisor's restart
        received = subscriber.collect(len(texts), timeout_s=60, settle_s=2.0)
    ids = Counter(m["id"] for m in received)
    missing = sorted({t.upper() for t in texts} - {m["text"] for m in received})
    assert len(ids) == len(texts), f"missing {len(texts) - len(ids)} messages: {missing}"
    assert max(ids.values()) <= 2  # a crash between send and mark resends once, same id
    assert sum(ids.values()) - len(ids) <= 2  # the victim driver's last two events' rows
    first_seen = list(dict.fromkeys(m["text"] for m in received))
    assert first_seen == [t.upper() for t in texts]


@pytest.mark.timeout(120)
def test_an_ingest_only_worker_hands_ordered_topics_to_workflow_workers(
    stack: Stack, emu: EmulatorServer, db: Settings
) -> None:
    cache = unique("split")
    routes_file(stack.routes_path.parent, uppercase_routes(cache))
    stack.hook(cache, "topic 1")
    stack.workers(1, "-Q", "ingest")  # a dedicated ingest worker does not run workflows itself
    texts = [f"message {i}" for i in range(1, 11)]
    with subscribed(emu, cache, "topic 2") as subscriber:
        stack.publish(cache, "topic 1", texts)
        stored = f"SELECT count(*) FROM events WHERE cache = '{cache}'"
        assert wait_for(lambda: count_rows(db, stored) == len(texts), 30)
        assert wait_for(lambda: queued_messages(db, "workflows") > 0, 10)
        assert count_rows(db, "SELECT count(*) FROM outbox") == 0
        stack.workers(1, "-Q", "workflows,publish")
        received = subscriber.collect(len(texts), timeout_s=30, settle_s=0.5)
    assert [m["text"] for m in received] == [t.upper() for t in texts]


@pytest.mark.timeout(120)
def test_publish_rate_limit_holds_across_three_workers(stack: Stack, emu: EmulatorServer) -> None:
    cache = unique("rate")
    routes_file(stack.routes_path.parent, uppercase_routes(cache).replace("ordered = true", ""))
    stack.hook(cache, "topic 1")
    limit_per_s = 20
    stack.env |= {"PIPELINE_PUBLISH_RATE_PER_S": str(limit_per_s), "PIPELINE_PUBLISH_BURST": "1"}
    stack.workers(3, "-c", "2")
    texts = [f"message {i}" for i in range(1, 61)]
    with subscribed(emu, cache, "topic 2") as subscriber:
        stack.publish(cache, "topic 1", texts)
        subscriber.collect(len(texts), timeout_s=30)
        arrivals = [m.received_at for m in subscriber.messages]
    assert len(arrivals) == len(texts)
    measured_per_s = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    # 2% covers the jitter between Momento accepting a message and the subscriber reading it.
    assert measured_per_s <= limit_per_s * 1.02, measured_per_s
    assert measured_per_s >= limit_per_s * 0.5, "far below the limit: something else throttled"


@pytest.mark.timeout(120)
def test_an_ordered_send_that_fails_holds_back_later_rows_until_it_is_dead_lettered(
    stack: Stack, emu: EmulatorServer, db: Settings
) -> None:
    """A row the sender thread cannot send (too large) is dead-lettered by the driver; the
    rows committed after it go out after that, in order, none before it."""
    cache = unique("holdback")
    routes_file(stack.routes_path.parent, uppercase_routes(cache))
    stack.hook(cache, "topic 1")
    stack.workers(1, "-c", "2")
    # It fits inbound; the outbound envelope pushes it past the 4 KB publish limit.
    texts = ["first", "x" * 4090, *(f"after {i}" for i in range(1, 21))]
    with subscribed(emu, cache, "topic 2") as subscriber:
        stack.publish(cache, "topic 1", texts)
        received = subscriber.collect(len(texts) - 1, timeout_s=60, settle_s=1.0)
    assert [m["text"] for m in received] == [t.upper() for t in texts if len(t) < 100]
    assert dead_letter_reasons(db) == ["LIMIT_EXCEEDED_ERROR"]
    assert count_rows(db, "SELECT count(*) FROM outbox WHERE status = 'sent'") == len(texts) - 1
    assert count_rows(db, "SELECT count(*) FROM outbox WHERE status = 'pending'") == 0


def failing_routes(cache: str, target_cache: str) -> str:
    return f"""
[[routes]]
name = "relay"
cache = "{cache}"
topic = "in"
workflow = "tasks.examples:uppercase"
publish = {{ cache = "{target_cache}", topic = "out" }}

[[routes]]
name = "big"
cache = "{cache}"
topic = "big"
workflow = "tasks.examples:uppercase"
publish = {{ cache = "{{cache}}", topic = "out" }}
"""


@pytest.mark.timeout(120)
def test_permanent_momento_errors_are_dead_lettered_and_replay_sends_once_fixed(
    stack: Stack, emu: EmulatorServer, db: Settings
) -> None:
    cache, target = unique("dlq"), unique("later")
    routes = routes_file(stack.routes_path.parent, failing_routes(cache, target))
    stack.hook(cache, "in")
    stack.hook(cache, "big")
    stack.workers(1, "-c", "2")
    stack.publish(cache, "in", ["hello"])
    # It fits inbound; the outbound envelope pushes it past the 4 KB publish limit.
    stack.publish(cache, "big", ["x" * 4090])
    assert wait_for(lambda: count_rows(db, "SELECT count(*) FROM dead_letters") == 2, 30)
    reasons = dead_letter_reasons(db)
    assert any("NOT_FOUND" in code for code in reasons), reasons
    assert any("LIMIT_EXCEEDED" in code for code in reasons), reasons
    assert count_rows(db, "SELECT count(*) FROM outbox WHERE status = 'dead'") == 2

    emu.create_cache(target)  # the fix: the target cache exists now
    with subscribed(emu, target, "out") as subscriber:
        env = dict(os.environ) | {"PIPELINE_ROUTES": str(routes)}
        dry = run_cli(["replay", "--dead-letters", "--dry-run"], env)
        assert "would replay 2 runs of 2 events" in dry
        queued = run_cli(["replay", "--dead-letters"], env)
        assert "queued 2 runs of 2 events" in queued
        assert "no worker answered" not in queued  # a worker runs them
        received = subscriber.collect(1, timeout_s=30, settle_s=2.0)
    assert [m["text"] for m in received] == ["HELLO"]
    assert wait_for(
        lambda: count_rows(db, "SELECT count(*) FROM outbox WHERE status = 'sent'") == 1, 10
    )
    # The oversized result failed again (same result, same limit): a new dead letter says so.
    assert count_rows(db, "SELECT count(*) FROM dead_letters WHERE resolved_at IS NULL") == 1
    assert "queued 1 runs" in run_cli(["replay", "--dead-letters"], env)


def dead_letter_reasons(db: Settings) -> list[str]:
    from sqlalchemy import text

    from pipeline.db import get_engine

    with get_engine(db).connect() as conn:
        rows = conn.execute(
            text("SELECT payload->>'code' FROM dead_letters WHERE kind = 'publish'")
        )
        return [str(code) for code in rows.scalars()]


def run_cli(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.timeout(150)
def test_sample_routes_weather_moderation_and_fx_examples(
    stack: Stack, emu: EmulatorServer
) -> None:
    stack.routes_path = Path(__file__).resolve().parents[2] / "routes.toml"
    for cache, topic in [
        ("weather", "observations"),
        ("chat", "room-7"),
        ("fx", "rates"),
        ("fx", "orders"),
    ]:
        stack.hook(cache, topic)
    stack.workers(2, "-c", "2")
    records = [
        {"location": "Paris", "temp_c": 18.5},
        {"location": "Oslo", "temp_c": 3.0},
        {"location": "Paris", "temp_c": 19.0},
    ]
    with (
        subscribed(emu, "weather", "changes") as changes,
        subscribed(emu, "chat", "moderated-room-7") as moderated,
        subscribed(emu, "fx", "order-results") as orders,
    ):
        stack.publish("weather", "observations", [json.dumps(r) for r in records])
        stack.publish("chat", "room-7", ["well darn it", "all good"])
        stack.publish("fx", "rates", [json.dumps({"pair": "EURUSD", "rate": 1.0842})])
        cache = mc.cache_client(client_settings(emu))
        try:
            assert wait_for(lambda: mc.cache_get(cache, "fx", "rate:EURUSD") is not None, 20)
            stack.publish(
                "fx",
                "orders",
                [
                    json.dumps({"id": "a", "pair": "EURUSD", "side": "buy", "limit": 1.09}),
                    json.dumps({"id": "b", "pair": "EURUSD", "side": "buy", "limit": 1.08}),
                    json.dumps({"id": "c", "pair": "GBPUSD", "side": "sell", "limit": 1.2}),
                ],
            )
            announced = [json.loads(m["text"]) for m in changes.collect(3, timeout_s=30)]
            assert wait_for(lambda: latest(cache, "paris") == 19.0, 20)
            assert latest(cache, "oslo") == 3.0
        finally:
            mc.close_client(cache)
        masked = [json.loads(m["text"]) for m in moderated.collect(2, timeout_s=30)]
        results = {
            r["order"]: r for r in (json.loads(m["text"]) for m in orders.collect(3, timeout_s=30))
        }
    assert [(a["location"], a["change_c"]) for a in announced] == [
        ("Paris", None),
        ("Oslo", None),
        ("Paris", 0.5),
    ]
    assert [m["text"] for m in masked] == ["well d**n it", "all good"]
    assert [m["masked"] for m in masked] == [1, 0]
    assert {k: r["status"] for k, r in results.items()} == {
        "a": "accepted",
        "b": "expired",
        "c": "expired",
    }
    assert results["a"]["rate"] == 1.0842


def latest(cache: object, location: str) -> float | None:
    value = mc.cache_get(cache, "weather", f"latest:{location}")
    return None if value is None else float(json.loads(value)["temp_c"])


@pytest.mark.timeout(90)
@pytest.mark.parametrize("ordered", [True, False])
def test_a_failing_workflow_is_retried_dead_lettered_and_its_topic_moves_on(
    stack: Stack, emu: EmulatorServer, db: Settings, ordered: bool
) -> None:
    cache = unique("flaky")
    body = uppercase_routes(cache).replace(
        "tasks.examples:uppercase", "tests.e2e.flaky_workflows:shout"
    )
    body = body.replace("ordered = true", f"ordered = {str(ordered).lower()}")
    routes_file(stack.routes_path.parent, body)
    stack.hook(cache, "topic 1")
    stack.env["PIPELINE_WORKFLOW_MAX_ATTEMPTS"] = "2"
    stack.workers(1, "-c", "2")
    with subscribed(emu, cache, "topic 2") as subscriber:
        stack.publish(cache, "topic 1", ["first", "boom", "third"])
        received = subscriber.collect(2, timeout_s=30, settle_s=1.0)
    texts = [m["text"] for m in received]
    assert texts == ["FIRST", "THIRD"] if ordered else sorted(texts) == ["FIRST", "THIRD"]
    assert wait_for(lambda: workflow_dead_letters(db), 20)  # unordered: after a backoff
    reasons = workflow_dead_letters(db)
    assert len(reasons) == 1
    assert "boom: this message always fails" in reasons[0]


def workflow_dead_letters(db: Settings) -> list[str]:
    from sqlalchemy import text

    from pipeline.db import get_engine

    with get_engine(db).connect() as conn:
        rows = conn.execute(text("SELECT reason FROM dead_letters WHERE kind = 'workflow'"))
        return [str(reason) for reason in rows.scalars()]


def test_a_worker_refuses_to_start_with_a_bad_routes_file(
    settings: Settings, tmp_path: Path
) -> None:
    bad = routes_file(tmp_path, uppercase_routes("c").replace("ordered = true", 'ordered = "yes"'))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "worker", "-c", "1"],
        env=dict(os.environ) | {"PIPELINE_ROUTES": str(bad)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"error: {bad}:7: route 'uppercase': ordered must be true or false" in result.stderr
