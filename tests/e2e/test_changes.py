"""Change records end to end: POST /changes → receiver → broker → workers → outbox → Momento.

The local Momento server (in a thread) holds the cache and the change topic; the test reads both
with the official SDK. Deliveries are reordered and repeated as EventBridge retries may do, and
the cache must never end stale.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.config import Settings
from pipeline.emulator import EmulatorServer
from pipeline.outbound import momento_client as mc
from tests.change_support import API_KEY, key_headers, stream_record
from tests.conftest import ReceiverServer, WorkerProcess, count_rows, wait_for
from tests.e2e.workflow_support import client_settings, subscribed
from tests.integration.emulator_support import unique


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, admin_port=None, idle_reset_s=0, seed=11).start()
    yield server
    server.stop()


class ChangeStack:
    """A receiver taking change records, workers with one changes route, SDK clients."""

    def __init__(self, emu: EmulatorServer, receiver: ReceiverServer, cache: str) -> None:
        self.emu = emu
        self.url = f"{receiver.url}/changes/dynamodb"
        self.cache = cache
        self.client = mc.cache_client(client_settings(emu))

    def post(self, records: list[dict[str, Any]] | dict[str, Any]) -> None:
        response = httpx.post(self.url, content=json.dumps(records), headers=key_headers())
        assert response.status_code == 200, response.text

    def cached(self, key: str) -> dict[str, Any] | None:
        value = mc.cache_get(self.client, self.cache, key)
        return None if value is None else dict(json.loads(value))

    def settled(self, settings: Settings, records: int) -> bool:
        """Every record stored and every outbox row sent."""
        stored = count_rows(settings, "SELECT count(*) FROM change_records")
        pending = count_rows(settings, "SELECT count(*) FROM outbox WHERE status = 'pending'")
        return stored == records and pending == 0


@pytest.fixture
def changes(
    db: Settings,
    emu: EmulatorServer,
    tmp_path: Path,
    receiver_factory: Callable[..., ReceiverServer],
    worker_factory: Callable[..., WorkerProcess],
) -> Iterator[ChangeStack]:
    cache = unique("user")
    emu.create_cache(cache)
    routes = tmp_path / "routes.toml"
    routes.write_text(f"""
[[routes]]
name = "user-cache"
changes = "dynamodb:user"
cache_set = {{ cache = "{cache}", key = "{{keys.id}}", ttl_seconds = 300 }}
publish = {{ cache = "{cache}", topic = "user-changes" }}
""")
    receiver = receiver_factory(db.model_copy(update={"pipeline_change_api_keys": [API_KEY]}))
    env = {"MOMENTO_LOCAL": emu.address, "PIPELINE_ROUTES": str(routes),
           "PIPELINE_PUBLISH_RATE_PER_S": "2000"}  # fmt: skip
    worker_factory("c1", "-c", "2", env=env)
    worker_factory("c2", "-c", "2", env=env)
    stack = ChangeStack(emu, receiver, cache)
    yield stack
    mc.close_client(stack.client)


def _modify(seq: int, key: str = "u1") -> dict[str, Any]:
    return stream_record("MODIFY", {"id": key}, seq, new={"id": key, "version": seq})


@pytest.mark.timeout(120)
def test_insert_modify_remove_set_then_delete_the_cache_and_reach_the_topic(
    db: Settings, emu: EmulatorServer, changes: ChangeStack
) -> None:
    with subscribed(emu, changes.cache, "user-changes") as subscriber:
        changes.post(stream_record("INSERT", {"id": "u1"}, 100, new={"id": "u1", "n": "ann"}))
        assert wait_for(lambda: changes.cached("u1") == {"id": "u1", "n": "ann"}, 30)
        modify = stream_record("MODIFY", {"id": "u1"}, 200, new={"id": "u1", "n": "bob"},
                               old={"id": "u1", "n": "ann"})  # fmt: skip
        changes.post([modify])
        assert wait_for(lambda: changes.cached("u1") == {"id": "u1", "n": "bob"}, 30)
        changes.post(stream_record("REMOVE", {"id": "u1"}, 300, old={"id": "u1", "n": "bob"}))
        assert wait_for(lambda: changes.cached("u1") is None, 30)
        messages = subscriber.collect(3, timeout_s=30, settle_s=0.5)
    bodies = [json.loads(m["text"]) for m in messages]
    assert [(b["event"], b["op"], b["seq"]) for b in bodies] == [
        ("INSERT", "upsert", "100"), ("MODIFY", "upsert", "200"), ("REMOVE", "delete", "300")
    ]  # fmt: skip
    assert bodies[1]["old"] == {"id": "u1", "n": "ann"}
    assert bodies[2]["new"] is None
    assert len({m["id"] for m in messages}) == 3


@pytest.mark.timeout(120)
def test_modifies_delivered_out_of_order_and_repeated_leave_the_newest_in_the_cache(
    db: Settings, changes: ChangeStack
) -> None:
    seqs = list(range(1, 41))
    random.Random(5).shuffle(seqs)
    deliveries = seqs + random.Random(6).sample(seqs, 10)  # EventBridge retries: repeats too
    chunks = [deliveries[i::4] for i in range(4)]

    def post_all(chunk: list[int]) -> None:
        for i in range(0, len(chunk), 3):  # small batches, as a pipe sends them
            changes.post([_modify(seq) for seq in chunk[i : i + 3]])

    threads = [threading.Thread(target=post_all, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert wait_for(lambda: changes.settled(db, 40), 60)
    assert changes.cached("u1") == {"id": "u1", "version": 40}
    assert count_rows(db, "SELECT count(*) FROM change_records") == 40


@pytest.mark.timeout(120)
def test_a_modify_delivered_after_the_remove_does_not_resurrect_the_item(
    db: Settings, changes: ChangeStack
) -> None:
    changes.post(_modify(10, key="u2"))
    assert wait_for(lambda: changes.cached("u2") == {"id": "u2", "version": 10}, 30)
    changes.post(stream_record("REMOVE", {"id": "u2"}, 30, old={"id": "u2", "version": 10}))
    assert wait_for(lambda: changes.cached("u2") is None, 30)
    changes.post(_modify(20, key="u2"))  # made before the REMOVE, delivered after it
    assert wait_for(lambda: changes.settled(db, 3), 30)
    assert changes.cached("u2") is None
    assert count_rows(db, "SELECT count(*) FROM change_items WHERE deleted AND seq = 30") == 1
    assert count_rows(db, "SELECT count(*) FROM change_records WHERE NOT applied") == 1
