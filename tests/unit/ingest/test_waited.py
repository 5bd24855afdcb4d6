"""A batch that waited in a backlog leaves its workflows to tasks instead of running them inline."""

from __future__ import annotations

from tasks.ingest import WAITED_S, waited

NOW_MS = 1_765_000_000_000


def test_a_fresh_batch_runs_its_workflows_inline() -> None:
    assert not waited([["{}", NOW_MS - 5], ["{}", NOW_MS]], NOW_MS)


def test_a_batch_whose_oldest_item_waited_leaves_them_to_tasks() -> None:
    late_ms = NOW_MS - int(WAITED_S * 1000) - 1
    assert waited([["{}", NOW_MS], ["{}", late_ms]], NOW_MS)


def test_items_without_a_receive_time_count_as_fresh() -> None:
    assert not waited([["{}", "not a time"]], NOW_MS)
    assert not waited([], NOW_MS)
