"""The local Momento server's own fault injection, delivered as webhooks to our real receiver.

Published with the official SDK; the server drops, duplicates and reorders deliveries, and
restarts the numbering after an idle period (as Momento does). The emulator's own counters and
the message texts ("e<epoch>-<n>") are the independent record of what was injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from pipeline.aggregation.rollups import rollup
from pipeline.aggregation.stats import gather_stats
from pipeline.config import Settings
from pipeline.db import get_engine, session_scope
from pipeline.emulator import EmulatorServer
from pipeline.sequencing.store import policy_from, tick
from tests.conftest import TEST_SECRET, ReceiverServer, WorkerProcess, wait_for
from tests.integration.emulator_support import topic_client
from tests.integration.sequencing.test_sequencing_db import REORDER_WINDOW_S, WORKER_ENV, received

SEED = 424242
TOPIC = "faulty"
PUBLISHED = (40, 30)  # messages per epoch; the server resets the numbering in between


def test_emulator_faults_end_up_in_stats(
    db: Settings,
    receiver_factory: Callable[..., ReceiverServer],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    worker_factory("emu-seq", "-c", "1", "-Q", "ingest", env=WORKER_ENV)
    receiver = receiver_factory()
    with EmulatorServer(port=0, admin_port=None, seed=SEED, idle_reset_s=1.0) as emu:
        emu.create_cache("chat")
        emu.register_webhook("chat", TOPIC, f"{receiver.url}/webhooks/momento", TEST_SECRET)
        emu.set_faults("chat", TOPIC, drop=0.15, duplicate=0.15, reorder_window=4)
        with topic_client(emu.port) as client:
            for epoch, count in enumerate(PUBLISHED, start=1):
                if epoch > 1:
                    time.sleep(1.6)  # idle: the server starts a new numbering
                for n in range(1, count + 1):
                    client.publish("chat", TOPIC, f"e{epoch}-{n}")

        def settled() -> bool:
            s = emu.webhook_stats("chat", TOPIC)
            decided = s.dropped + s.attempted - s.duplicated
            return decided == sum(PUBLISHED) and s.delivered == s.attempted

        assert wait_for(settled, 20)
        stats = emu.webhook_stats("chat", TOPIC)
    assert stats.dropped >= 3
    assert stats.duplicated >= 3
    assert wait_for(lambda: received(db, TOPIC) == stats.delivered, 20)
    time.sleep(REORDER_WINDOW_S + 0.1)
    quick = db.model_copy(update={"pipeline_reorder_window_s": REORDER_WINDOW_S})
    with session_scope(db) as session:
        tick(session, policy_from(quick))
    engine = get_engine(db)
    rollup(engine, db.pipeline_rollup_window_s)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT text, epoch, topic_sequence_number FROM events WHERE topic = :t"),
            {"t": TOPIC},
        ).all()
        ranges = conn.execute(
            text("SELECT epoch, first_seq, last_seq FROM lost_ranges WHERE topic = :t"),
            {"t": TOPIC},
        ).all()
    got: dict[int, set[int]] = {1: set(), 2: set()}
    for body, epoch, seq in rows:
        published_epoch, n = (int(part) for part in body[1:].split("-"))
        assert (epoch, seq) == (published_epoch, n)  # epochs inferred right, numbering as sent
        got[epoch].add(n)
    lost = {(e, n) for e, first, last in ranges for n in range(first, last + 1)}
    missing = {(e, n) for e, ns in got.items() for n in range(1, max(ns)) if n not in ns}
    assert lost == missing
    tails = sum(count - max(got[e]) for e, count in enumerate(PUBLISHED, start=1))
    assert len(lost) + tails == stats.dropped  # every drop is counted, except an unseen tail
    now = datetime.now(UTC)
    (topic,) = gather_stats(
        engine,
        db.pipeline_rollup_window_s,
        since=now - timedelta(hours=1),
        until=now + timedelta(hours=1),
        topic=TOPIC,
    )
    assert topic.events == sum(PUBLISHED) - stats.dropped
    assert (topic.lost, topic.resets, topic.duplicates) == (len(lost), 1, stats.duplicated)
