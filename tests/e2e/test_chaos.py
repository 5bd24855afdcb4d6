"""The chaos suite at test scale: the same scenarios as ``./run chaos`` (benchmarks/chaos), small.

One stack for the module (its own Postgres and broker, which the scenarios crash and restart,
the local Momento server, the receiver, two `pipeline worker -c 2` and beat); each scenario uses
a cache of its own. Every target of the full suite must hold: nothing acked lost, no duplicated
rows, no outbound message missing or reordered, no 5xx but 503, no forgery accepted.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.chaos.attack import run_hostile
from benchmarks.chaos.checks import Report
from benchmarks.chaos.scenarios import Options, run_kill, run_outage
from benchmarks.chaos.stack import Stack, StackOptions

SMALL = Options(
    events=1000,
    topics=10,
    kills=2,
    outage_s=4,
    rate=200,
    requests=500,
    drain_timeout_s=90,
    kill_drain_limit_s=60,
    drained_after_return_limit_s=60,
)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The pipeline with a short visibility timeout, as the test suite runs it everywhere."""
    with Stack(StackOptions(env={"PIPELINE_VISIBILITY_TIMEOUT_S": "10"})) as running:
        yield running


def assert_targets_met(report: Report) -> None:
    missed = [f"{t.name}: {t.detail}" for t in report.targets if not t.ok]
    assert not missed, "\n".join(report.lines())


@pytest.mark.timeout(180)
def test_worker_kills_lose_duplicate_and_reorder_nothing(stack: Stack) -> None:
    report = run_kill(stack, SMALL)
    assert report.figures["worker kills"] == 2
    assert report.figures["acked events"] == 1000
    assert_targets_met(report)


@pytest.mark.timeout(180)
def test_postgres_crash_loses_nothing_and_everything_drains_after_it_returns(
    stack: Stack,
) -> None:
    report = run_outage(stack, SMALL, "postgres")
    assert report.figures["2xx answered while Postgres was down"] > 0  # it was down mid-traffic
    assert report.figures["acked events"] == 1000
    assert_targets_met(report)


@pytest.mark.timeout(180)
def test_broker_crash_is_answered_503_and_every_acked_event_is_stored(stack: Stack) -> None:
    report = run_outage(stack, SMALL, "broker")
    assert report.figures["503 answers"] > 0  # it was down mid-traffic
    assert report.figures["  of requests sent after the crash"] == 0
    assert report.figures["acked events"] > 0
    assert_targets_met(report)


@pytest.mark.timeout(180)
def test_hostile_requests_get_no_5xx_no_forgery_is_accepted_and_nothing_valid_is_lost(
    stack: Stack,
) -> None:
    report = run_hostile(stack, SMALL)
    assert report.figures["hostile requests"] >= 500
    assert report.figures["  schemathesis"] > 0
    assert report.figures["hostile accepted (2xx), distinct events"] > 0
    assert_targets_met(report)
