"""The group-commit spacing policy on its own: explicit times, no loop, no broker."""

from __future__ import annotations

import pytest

from pipeline.ingest.spacing import BEHIND_HOLD_S, Backlog, Spacing


def fast_traffic(spacing: Spacing, start: float, count: int = 10, gap_s: float = 0.001) -> float:
    """``count`` requests ``gap_s`` apart from ``start``; returns the time of the last one."""
    now = start
    for i in range(count):
        now = start + i * gap_s
        spacing.arrived(now)
    return now


def test_a_batch_goes_at_once_while_the_workers_keep_up() -> None:
    spacing = Spacing(wait_s=0.002, max_wait_s=0.02, interval_s=0.01)
    spacing.learned(Backlog(queued=1), now=100.0)
    now = fast_traffic(spacing, 100.0)
    spacing.flushed(now)
    assert spacing.wait_s_at(now) == 0.0


def test_waiting_batches_lengthen_the_wait_up_to_the_longest() -> None:
    spacing = Spacing(wait_s=0.002, max_wait_s=0.02, interval_s=0.0)
    spacing.learned(Backlog(queued=4), now=100.0)
    assert spacing.wait_s_at(100.0) == pytest.approx(0.006)
    spacing.learned(Backlog(queued=50), now=100.0)
    assert spacing.wait_s_at(100.0) == pytest.approx(0.02)


def test_a_deep_backlog_collects_up_to_the_backlog_wait_while_spacing_keeps_its_cap() -> None:
    spacing = Spacing(wait_s=0.002, max_wait_s=0.02, interval_s=0.01, backlog_wait_s=0.25)
    spacing.learned(Backlog(queued=51), now=100.0)
    assert spacing.wait_s_at(100.0) == pytest.approx(0.1)  # 2 ms per waiting batch
    spacing.learned(Backlog(queued=5000), now=100.0)  # an outage's backlog
    assert spacing.wait_s_at(100.0) == pytest.approx(0.25)
    lagging = Spacing(wait_s=0.002, max_wait_s=0.02, interval_s=0.01, backlog_wait_s=0.25)
    lagging.learned(Backlog(queued=1, lagging=True), now=100.0)  # late, but no queue
    now = fast_traffic(lagging, 100.0)
    lagging.flushed(now)
    assert lagging.wait_s_at(now) == pytest.approx(0.02)


def test_fast_requests_are_spaced_by_the_interval_only_while_the_workers_are_behind() -> None:
    spacing = Spacing(wait_s=0.002, max_wait_s=0.02, interval_s=0.01)
    spacing.learned(Backlog(queued=2), now=100.0)  # one batch waiting: behind
    now = fast_traffic(spacing, 100.0)
    spacing.flushed(now)
    assert spacing.wait_s_at(now) == pytest.approx(0.01)
    later = now + BEHIND_HOLD_S + 0.1
    spacing.learned(Backlog(queued=1), now=now)  # caught up; the hold then runs out
    assert spacing.wait_s_at(later) == 0.0


def test_a_late_workflow_stage_or_a_sender_that_cannot_tell_spaces_by_the_longest_wait() -> None:
    blind = Spacing(wait_s=0.002, max_wait_s=0.02, interval_s=0.01)  # never learns a backlog
    now = fast_traffic(blind, 100.0)
    blind.flushed(now)
    assert blind.wait_s_at(now) == pytest.approx(0.02)
    late = Spacing(wait_s=0.002, max_wait_s=0.02, interval_s=0.01)
    assert late.learned(Backlog(queued=1, lagging=True), now=100.0)  # a change: reported
    assert not late.learned(Backlog(queued=1, lagging=True), now=100.0)
    now = fast_traffic(late, 100.0)
    late.flushed(now)
    assert late.wait_s_at(now) == pytest.approx(0.02)


def test_slow_traffic_is_never_held_back() -> None:
    spacing = Spacing(wait_s=0.002, max_wait_s=0.02, interval_s=0.01)
    spacing.learned(Backlog(queued=1, lagging=True), now=100.0)
    now = fast_traffic(spacing, 100.0, gap_s=0.5)  # gaps far above the interval
    spacing.flushed(now)
    assert spacing.wait_s_at(now) == 0.0
