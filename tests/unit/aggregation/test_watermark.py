"""The roll-up watermark plan: never settles past a transaction that may still add rows."""

from __future__ import annotations

from pipeline.aggregation.watermark import SOURCES, Mark, Snapshot, plan


def snap(running: set[int], events: int, duplicates: int = 0, lost: int = 0) -> Snapshot:
    return Snapshot(frozenset(running), {"events": events, "duplicates": duplicates, "lost": lost})


def test_a_quiet_first_run_scans_and_settles_everything() -> None:
    done = plan({}, set(), snap(set(), events=10, duplicates=2))
    assert done.scan == {"events": (0, 10), "duplicates": (0, 2)}
    assert done.recheck == {}
    assert done.marks["events"] == Mark(settled_id=10, scanned_id=10)
    assert set(done.marks) == set(SOURCES)


def test_a_busy_first_run_settles_nothing_yet() -> None:
    done = plan({}, set(), snap({41}, events=10))
    assert done.marks["events"] == Mark(settled_id=0, scanned_id=10)
    assert done.unsettled_xids == {41}


def test_after_a_quiet_scan_only_new_ids_are_read_and_busy_ones_settle_one_run_later() -> None:
    marks = {"events": Mark(0, 10)}
    done = plan(marks, set(), snap({50}, events=15))
    assert done.scan == {"events": (10, 15)}
    assert done.recheck == {}
    assert done.marks["events"] == Mark(settled_id=10, scanned_id=15)


def test_a_transaction_running_at_the_scan_holds_the_settled_id_back() -> None:
    marks = {"events": Mark(0, 10)}
    still = plan(marks, {77}, snap({77, 80}, events=12))
    assert still.marks["events"] == Mark(settled_id=0, scanned_id=12)
    assert still.recheck == {}
    assert still.unsettled_xids == {77, 80}


def test_when_waited_for_transactions_end_their_range_is_read_again_then_settled() -> None:
    marks = {"events": Mark(0, 12), "lost": Mark(3, 3)}
    done = plan(marks, {77, 80}, snap(set(), events=12, lost=3))
    assert done.recheck == {"events": (0, 12)}
    assert done.scan == {}
    assert done.marks["events"] == Mark(settled_id=12, scanned_id=12)
    assert done.unsettled_xids == frozenset()


def test_some_ended_some_running_rereads_but_does_not_settle() -> None:
    marks = {"events": Mark(5, 12)}
    done = plan(marks, {77, 80}, snap({80, 90}, events=20))
    assert done.recheck == {"events": (5, 12)}
    assert done.scan == {"events": (12, 20)}
    assert done.marks["events"] == Mark(settled_id=5, scanned_id=20)
    assert done.unsettled_xids == {80, 90}


def test_max_ids_caps_each_source_and_reports_the_rest() -> None:
    done = plan({"events": Mark(10, 10)}, set(), snap(set(), events=100, duplicates=7), 25)
    assert done.scan == {"events": (10, 35), "duplicates": (0, 7)}
    assert done.marks["events"].scanned_id == 35
    assert done.remaining == 65


def test_a_top_below_the_scanned_id_never_moves_it_back() -> None:
    done = plan({"events": Mark(10, 10)}, set(), snap(set(), events=4))
    assert done.scan == {}
    assert done.marks["events"] == Mark(10, 10)
