"""Routes and workflows end to end: SDK publish → webhook → receiver → workers → outbox → SDK.

Everything is real: the local Momento server (in a thread) with the official SDK on both ends,
the receiver, the broker, `pipeline worker` subprocesses and Postgres.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.emulator import EmulatorServer
from tests.conftest import ReceiverServer, WorkerProcess
from tests.e2e.workflow_support import Stack, beat, subscribed
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
    assert len(ids) == len(texts), f"missing {len(texts) - len(ids)} messages"
    assert max(ids.values()) <= 2  # a crash between send and mark resends once, same id
    assert sum(ids.values()) - len(ids) <= 2  # at most one per task the victim had running
    first_seen = list(dict.fromkeys(m["text"] for m in received))
    assert first_seen == [t.upper() for t in texts]
