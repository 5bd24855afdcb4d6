"""`pipeline stats --json` and published summaries round latencies instead of float noise."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

from pipeline.aggregation.stats import Latency, TopicStats, round_ms
from pipeline.aggregation.summaries import summary_json


def test_round_ms_keeps_ten_microseconds() -> None:
    assert round_ms(0.509999999999998) == 0.51
    assert round_ms(12.3456) == 12.35
    assert round_ms(None) is None


def test_stats_json_latencies_are_rounded() -> None:
    row = TopicStats("chat", "room-1", receive_latency=Latency(0.509999999999998, 3.0000000001))
    data = row.to_json()
    assert data["receive_latency"] == {"p50_ms": 0.51, "p95_ms": 3.0, "p99_ms": None}
    assert data["publish_latency"] == {"p50_ms": None, "p95_ms": None, "p99_ms": None}


def test_published_summary_latencies_are_rounded() -> None:
    values = dict.fromkeys(
        ["events", "bytes", "first_seq", "last_seq", "out_of_order", "resets", "duplicates"], 1
    )
    latencies = {
        f"{kind}_latency_{p}_ms": 0.509999999999998
        for kind in ("publish", "receive")
        for p in ("p50", "p95", "p99")
    }
    row = SimpleNamespace(
        cache="chat",
        topic="room-1",
        window_s=60,
        window_start=datetime(2026, 1, 1, tzinfo=UTC),
        gaps=0,
        lost=0,
        distinct_tokens=0,
        **values,
        **latencies,
    )
    summary = json.loads(summary_json(row))
    assert summary["receive_latency_ms"] == {"p50": 0.51, "p95": 0.51, "p99": 0.51}
    assert "0.5099" not in summary_json(row)
