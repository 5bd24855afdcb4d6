"""The overview's order: topics in trouble first, the worst on top (pure: no database)."""

from __future__ import annotations

from typing import Any

from pipeline.aggregation.stats import TopicStats
from pipeline.dashboard.queries import OUTBOX_STUCK_S, QUIET_AFTER_S, TopicRow


def row(topic: str, lost: int = 0, **values: Any) -> TopicRow:
    return TopicRow(stats=TopicStats("c", topic, events=10, lost=lost), **values)


def test_troubles_name_what_is_wrong() -> None:
    assert row("fine", quiet_s=1.0, outbox_oldest_s=1.0).troubles == []
    assert row("t", lost=3, dead_letters=2).troubles == ["3 lost", "2 dead letters"]
    assert row("t", outbox_oldest_s=OUTBOX_STUCK_S + 1).troubles == ["outbox stuck"]
    assert row("t", route_lag=7).troubles == ["route 7 behind"]
    assert row("t", quiet_s=QUIET_AFTER_S + 1).troubles == ["quiet"]


def test_trouble_sorts_first_and_the_most_lost_or_dead_on_top() -> None:
    rows = [
        row("a-fine"),
        row("b-quiet", quiet_s=QUIET_AFTER_S + 1),
        row("c-lost-1", lost=1),
        row("d-dead-5", dead_letters=5),
        row("e-fine"),
    ]
    ordered = [r.stats.topic for r in sorted(rows, key=lambda r: r.sort_key)]
    assert ordered == ["d-dead-5", "c-lost-1", "b-quiet", "a-fine", "e-fine"]
