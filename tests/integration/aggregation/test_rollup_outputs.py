"""What roll-ups feed: retention, published summaries, `pipeline stats` and /metrics gauges."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from pipeline.aggregation.retention import delete_expired, retention_cutoff
from pipeline.aggregation.rollups import rollup
from pipeline.aggregation.stats import gather_stats, parse_when
from pipeline.aggregation.summaries import publish_finished
from pipeline.celery_app import app
from pipeline.config import Settings
from pipeline.db import get_engine
from pipeline.emulator import EmulatorServer
from pipeline.metrics import register_db_collector
from pipeline.workflows.templates import glob_regex
from tasks.aggregate import publish_summaries
from tests.conftest import WorkerProcess, count_rows, wait_for
from tests.integration.aggregation.test_aggregation import (
    BASE_MS,
    WINDOW_S,
    item,
    rollups,
    store,
    window,
)
from tests.integration.emulator_support import WebhookSink

DAY_MS = 86_400_000


def test_retention_deletes_old_rolled_up_rows_and_keeps_rollups(db: Settings) -> None:
    old = BASE_MS - 10 * DAY_MS
    store(db, *(item(s, old + s * 1_000, old + s * 1_000 + 7) for s in range(1, 5)))
    store(db, item(2, old + 2_000, old + 9_000))  # a duplicate delivery, 10 days ago
    store(db, item(1, BASE_MS, BASE_MS + 5, topic="fresh"))
    engine = get_engine(db)
    rollup(engine, WINDOW_S)
    kept = rollups(db)
    store(db, item(9, old + 50_000, old + 50_007))  # old, but not rolled up yet
    report = delete_expired(engine, 7, WINDOW_S)
    assert (report.events, report.duplicates) == (4, 1)
    assert count_rows(db, "SELECT count(*) FROM events") == 2
    cutoff = retention_cutoff(7)
    rollup(engine, WINDOW_S, keep_after=cutoff)
    assert rollups(db) == kept  # the emptied window was not recomputed
    assert [(r["topic"], r["events"]) for r in kept] == [("fresh", 1), ("room-1", 4)]
    assert delete_expired(engine, 7, WINDOW_S).events == 1  # now it is rolled up: deletable


def test_retention_keeps_expired_events_a_workflow_still_needs(db: Settings) -> None:
    old = BASE_MS - 10 * DAY_MS
    store(db, *(item(s, old + s * 1_000, old + s * 1_000 + 7) for s in range(1, 7)))
    engine = get_engine(db)
    rollup(engine, WINDOW_S)
    with engine.begin() as conn:
        ids = dict(conn.execute(text("SELECT topic_sequence_number, id FROM events")).all())
        conn.execute(
            text("INSERT INTO workflow_runs (route, event_id, status) VALUES ('r', :e, 'running')"),
            {"e": ids[2]},
        )
        dead = {"route": "r", "event_id": ids[3]}
        conn.execute(
            text(
                "INSERT INTO dead_letters (kind, reason, payload)"
                " VALUES ('workflow', 'boom', CAST(:p AS jsonb))"
            ),
            {"p": json.dumps(dead)},
        )
        conn.execute(  # an ordered route has run the topic up to seq 4: 5 and 6 are ahead
            text(
                "INSERT INTO route_cursors (route, cache, topic, epoch, seq, event_id)"
                " SELECT 'r', cache, topic, epoch, topic_sequence_number, id"
                " FROM events WHERE id = :e"
            ),
            {"e": ids[4]},
        )

    def left() -> list[int]:
        query = "SELECT topic_sequence_number FROM events ORDER BY 1"
        with engine.connect() as conn:
            return list(conn.execute(text(query)).scalars())

    assert delete_expired(engine, 7, WINDOW_S).events == 2
    assert left() == [2, 3, 5, 6]
    with engine.begin() as conn:
        conn.execute(text("UPDATE workflow_runs SET status = 'done'"))
        conn.execute(text("UPDATE dead_letters SET resolved_at = now()"))
        conn.execute(text("UPDATE route_cursors SET seq = 6, event_id = :e"), {"e": ids[6]})
    assert delete_expired(engine, 7, WINDOW_S).events == 4
    assert left() == []


def test_retention_keeps_expired_events_of_an_ordered_route_that_has_not_started_the_topic(
    db: Settings,
) -> None:
    old = BASE_MS - 10 * DAY_MS
    store(db, *(item(s, old + s * 1_000, old + s * 1_000 + 7) for s in range(1, 4)))
    store(db, item(1, old, old + 7, topic="other"))
    engine = get_engine(db)
    rollup(engine, WINDOW_S)
    # Matches room-1, not "other"; no cursor yet.
    ordered = [("relay", glob_regex("ch*"), glob_regex("room-?"))]
    assert delete_expired(engine, 7, WINDOW_S, ordered=ordered).events == 1
    assert count_rows(db, "SELECT count(*) FROM events WHERE topic = 'room-1'") == 3
    with engine.begin() as conn:  # the route has run the whole topic
        conn.execute(
            text(
                "INSERT INTO route_cursors (route, cache, topic, epoch, seq, event_id)"
                " SELECT 'relay', cache, topic, epoch, topic_sequence_number, id FROM events"
                " ORDER BY id DESC LIMIT 1"
            )
        )
    assert delete_expired(engine, 7, WINDOW_S, ordered=ordered).events == 3


def test_finished_windows_are_published_once_and_again_when_they_change(db: Settings) -> None:
    b = BASE_MS
    store(db, item(1, b + 1_000, b + 1_005), item(2, b + 61_000, b + 61_009))
    engine = get_engine(db)
    rollup(engine, WINDOW_S)
    sent: list[str] = []
    now = window(1) + timedelta(seconds=WINDOW_S + 3)  # window 1 is not settled yet
    assert publish_finished(engine, WINDOW_S, sent.append, settle_s=5, now=now) == 1
    assert publish_finished(engine, WINDOW_S, sent.append, settle_s=5, now=now) == 0
    summary = json.loads(sent[0])
    assert summary["window_start"] == window(0).isoformat()
    assert (summary["topic"], summary["events"], summary["lost"]) == ("room-1", 1, 0)
    assert summary["receive_latency_ms"]["p50"] == pytest.approx(5)
    store(db, item(3, BASE_MS + 2_000, BASE_MS + 62_000))
    rollup(engine, WINDOW_S)
    later = now + timedelta(seconds=60)
    assert publish_finished(engine, WINDOW_S, sent.append, settle_s=5, now=later) == 2
    assert [json.loads(s)["events"] for s in sent[1:]] == [2, 1]


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, admin_port=None).start()
    server.create_cache("ops")
    yield server
    server.stop()


def test_summaries_reach_the_configured_momento_topic(
    db: Settings, emulator: EmulatorServer
) -> None:
    store(db, item(1, BASE_MS + 1_000, BASE_MS + 1_005))
    rollup(get_engine(db), WINDOW_S)
    settings = db.model_copy(
        update={
            "momento_local": emulator.address,
            "pipeline_summary_cache": "ops",
            "pipeline_summary_topic": "rollups",
        }
    )
    with WebhookSink() as sink:
        emulator.register_webhook("ops", "rollups", sink.url)
        assert publish_summaries(settings) == 1
        received = sink.wait_for(1)
    assert len(received) == 1
    summary = json.loads(received[0].json["text"])
    assert (summary["cache"], summary["topic"], summary["events"]) == ("chat", "room-1", 1)
    assert publish_summaries(settings) == 0
    assert publish_summaries(db) == 0  # no summary topic configured: nothing is sent


def seed_stats(settings: Settings) -> None:
    b = BASE_MS
    store(settings, *(item(s, b + s * 100, b + s * 100 + 10) for s in (1, 2, 4, 3, 7, 8)))
    store(settings, item(9, b + 900, b + 2_000))  # 5..6 declared lost
    store(settings, item(2, b + 200, b + 2_100))  # duplicate
    store(settings, item(1, b + 9_000, b + 9_010))  # reset
    store(settings, item(1, b + 100, b + 100, topic="lobby"))
    rollup(get_engine(settings), WINDOW_S)


def test_gather_stats_totals_per_topic_with_lost_ranges_and_filters(db: Settings) -> None:
    seed_stats(db)
    since, until = window(0), window(5)
    engine = get_engine(db)
    lobby, room = gather_stats(engine, WINDOW_S, since=since, until=until)
    assert (room.topic, room.events, room.lost, room.gaps) == ("room-1", 8, 2, 1)
    assert (room.resets, room.duplicates, room.out_of_order) == (1, 1, 1)
    assert [(r.epoch, r.label()) for r in room.lost_ranges] == [(1, "5-6")]
    assert room.receive_latency.p50_ms == pytest.approx(10)
    assert lobby.events == 1
    assert lobby.receive_latency.p50_ms == pytest.approx(0)
    only = gather_stats(engine, WINDOW_S, since=since, until=until, topic="room-*")
    assert [s.topic for s in only] == ["room-1"]
    assert gather_stats(engine, WINDOW_S, since=since, until=until, cache="other") == []
    assert gather_stats(engine, WINDOW_S, since=window(1), until=until) == []


def test_parse_when_reads_ages_and_iso_times() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_when("90s", now) == now - timedelta(seconds=90)
    assert parse_when("2h", now) == now - timedelta(hours=2)
    assert parse_when("2026-01-01T00:00:00", now) == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="15m"):
        parse_when("yesterday", now)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_pipeline_stats_json_and_table(db: Settings) -> None:
    seed_stats(db)
    with get_engine(db).begin() as conn:
        conn.execute(text("TRUNCATE rollups, rollup_watermarks"))  # the command rolls up first
    result = run_cli("stats", "--json", "--topic", "room-*")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["window_s"] == WINDOW_S
    assert payload["until"] is None  # no --until: no upper bound, as the help says
    (room,) = payload["topics"]
    assert (room["cache"], room["topic"], room["events"], room["lost"]) == ("chat", "room-1", 8, 2)
    assert (room["resets"], room["duplicates"], room["out_of_order"]) == (1, 1, 1)
    assert [(r["first"], r["last"]) for r in room["lost_ranges"]] == [(5, 6)]
    table = run_cli("stats", "--no-refresh", "--since", "1d")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["CACHE", "TOPIC", "EVENTS", "LOST"]
    assert lines[2].split()[:5] == ["chat", "room-1", "8", "2", "1"]
    assert "lost chat/room-1 epoch 1: 5-6" in lines
    bounded = json.loads(run_cli("stats", "--json", "--no-refresh", "--until", "1h").stdout)
    until = datetime.fromisoformat(bounded["until"])
    assert abs(until - (datetime.now(UTC) - timedelta(hours=1))) < timedelta(minutes=1)
    bad = run_cli("stats", "--since", "soon")
    assert bad.returncode == 2
    assert "soon" in bad.stderr


def test_database_gauges_on_a_scrape(db: Settings) -> None:
    seed_stats(db)
    from pipeline.db import session_scope
    from pipeline.ingest.store import dead_letter

    with session_scope(db) as session:
        dead_letter(session, "publish", "cache not found", {"n": 1})
        dead_letter(session, "publish", "message too large", {"n": 2})
    with get_engine(db).begin() as conn:
        conn.execute(
            text(
                "INSERT INTO subscription_leases (cache, topic, holder, expires_at) VALUES"
                " ('w', 'held', 'l1', now() + interval '5 s'),"
                " ('w', 'orphan', NULL, now() - interval '40 s')"
            )
        )
    registry = CollectorRegistry()
    assert register_db_collector(db, registry) is register_db_collector(db, registry)
    from prometheus_client import generate_latest

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    room = (("cache", "chat"), ("topic", "room-1"))
    assert samples[("pipeline_db_metrics_up", ())] == 1
    assert samples[("pipeline_topic_lost", room)] == 2
    assert samples[("pipeline_topic_resets_total", room)] == 1
    assert samples[("pipeline_topic_late_total", room)] == 1
    assert samples[("pipeline_topic_duplicates_total", room)] == 1
    assert samples[("pipeline_topic_received_total", room)] == 9
    assert samples[("pipeline_topic_open_gaps", room)] == 0
    assert samples[("pipeline_topic_last_received_age_seconds", room)] > 500
    assert samples[("pipeline_sequencer_lag_seconds", ())] == 0
    assert samples[("pipeline_rollup_backlog_events", (("window_s", "60"),))] == 0
    assert 0 <= samples[("pipeline_rollup_age_seconds", (("window_s", "60"),))] < 60
    assert samples[("pipeline_dead_letters", (("kind", "publish"),))] == 2
    assert samples[("pipeline_outbox_pending_messages", ())] == 0
    assert samples[("pipeline_outbox_oldest_pending_age_seconds", ())] == 0
    unheld = "pipeline_subscription_unheld_seconds"
    assert samples[(unheld, (("cache", "w"), ("topic", "held")))] == 0
    assert 40 <= samples[(unheld, (("cache", "w"), ("topic", "orphan")))] < 100


def test_a_scrape_without_a_database_reports_down(settings: Settings) -> None:
    registry = CollectorRegistry()
    broken = settings.model_copy(update={"database_url": "postgresql://nobody@127.0.0.1:1/x"})
    register_db_collector(broken, registry)
    from prometheus_client import generate_latest

    text_out = generate_latest(registry).decode()
    assert "pipeline_db_metrics_up 0.0" in text_out
    assert "pipeline_topic_lost" not in text_out


def test_aggregate_tasks_run_on_a_worker_of_the_aggregate_queue(
    db: Settings, worker_factory: Callable[..., WorkerProcess]
) -> None:
    old = BASE_MS - 10 * DAY_MS
    store(db, item(1, old, old + 5), item(1, BASE_MS, BASE_MS + 5, topic="fresh"))
    rollup(get_engine(db), WINDOW_S)  # the old window is rolled up while it is still allowed
    store(db, item(2, BASE_MS + 60_000, BASE_MS + 60_005, topic="fresh"))
    worker_factory("aggregate", "-c", "1", "-Q", "aggregate")
    app.send_task("tasks.aggregate.rollup")
    assert wait_for(lambda: count_rows(db, "SELECT count(*) FROM rollups") == 3, 30)
    app.send_task("tasks.aggregate.retention")
    assert wait_for(lambda: count_rows(db, "SELECT count(*) FROM events") == 2, 30)
    assert [(r["topic"], r["events"]) for r in rollups(db)] == [
        ("fresh", 1),
        ("fresh", 1),
        ("room-1", 1),
    ]
    schedule = app.conf.beat_schedule
    assert schedule["aggregate-rollup"]["schedule"] == db.pipeline_rollup_window_s
    assert schedule["aggregate-retention"]["task"] == "tasks.aggregate.retention"
