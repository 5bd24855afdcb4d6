"""The ordered sender: rows go out once each, in the order given, and nothing after a failure."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from pipeline.outbound.ordered_sender import OrderedSender


class Row(NamedTuple):
    id: int
    due: bool = True


class Recorder:
    """Records what it was asked to send; fails on the ids in ``fail``; ``gate`` holds sends."""

    def __init__(self, fail: set[int] | None = None) -> None:
        self.sent: list[int] = []
        self.threads: set[str] = set()
        self.fail = fail or set()
        self.gate = threading.Event()
        self.gate.set()

    def send_now(self, row: Any) -> None:
        self.gate.wait(5)
        self.threads.add(threading.current_thread().name)
        if row.id in self.fail:
            raise RuntimeError(f"cannot send {row.id}")
        self.sent.append(row.id)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def sender(recorder: Recorder) -> Iterator[OrderedSender]:
    made = OrderedSender(recorder)
    made.begin()
    yield made
    made.close()


def test_rows_are_sent_in_order_once_on_another_thread(
    sender: OrderedSender, recorder: Recorder
) -> None:
    assert sender.submit([Row(1), Row(2)]) == 2
    # A later commit lists the earlier rows again (still pending in its view): not resent.
    assert sender.submit([Row(1), Row(2), Row(3)]) == 1
    assert sender.wait() == [1, 2, 3]
    assert recorder.sent == [1, 2, 3]
    assert recorder.threads
    assert threading.current_thread().name not in recorder.threads
    assert sender.sent() == []  # each id is reported once


def test_sent_reports_only_the_finished_head_of_the_queue(
    sender: OrderedSender, recorder: Recorder
) -> None:
    sender.submit([Row(1)])
    assert sender.wait() == [1]
    recorder.gate.clear()  # the next send hangs until the gate opens
    sender.submit([Row(2), Row(3)])
    time.sleep(0.05)
    assert sender.sent() == []
    recorder.gate.set()
    assert sender.wait() == [2, 3]


def test_a_row_not_due_holds_back_the_rows_after_it(
    sender: OrderedSender, recorder: Recorder
) -> None:
    assert sender.submit([Row(1), Row(2, due=False), Row(3)]) == 1
    assert sender.wait() == [1]
    assert recorder.sent == [1]


def test_after_a_failure_nothing_more_is_sent() -> None:
    recorder = Recorder(fail={2})
    sender = OrderedSender(recorder)
    try:
        sender.begin()
        sender.submit([Row(1), Row(2), Row(3)])
        assert sender.wait() == [1]
        assert sender.failed
        assert recorder.sent == [1]  # 3 was queued behind the failed 2: never sent
        assert sender.submit([Row(4)]) == 0
        # The next turn starts clean.
        recorder.fail.clear()
        sender.begin()
        assert not sender.failed
        sender.submit([Row(2), Row(3)])
        assert sender.wait() == [2, 3]
        assert recorder.sent == [1, 2, 3]
    finally:
        sender.close()


def test_a_turn_may_not_begin_with_sends_in_flight(
    sender: OrderedSender, recorder: Recorder
) -> None:
    recorder.gate.clear()
    sender.submit([Row(1)])
    with pytest.raises(AssertionError):
        sender.begin()
    recorder.gate.set()
    assert sender.wait() == [1]


def test_a_submit_waits_for_the_previous_events_sends(
    sender: OrderedSender, recorder: Recorder
) -> None:
    """At most one event's rows are in flight: the next event's wait for them."""
    recorder.gate.clear()
    sender.submit([Row(1)])
    second = threading.Thread(target=sender.submit, args=([Row(2)],))
    second.start()
    second.join(0.1)
    assert second.is_alive()  # held back while row 1 is being sent
    assert recorder.sent == []
    recorder.gate.set()
    second.join(5)
    assert not second.is_alive()
    assert sender.wait() == [1, 2]
