"""Unit tests for pipeline.sequencing: one rule per test, hand-built deliveries, no I/O."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import count
from typing import Any

import pytest

from pipeline.sequencing.rules import (
    Classified,
    Delivery,
    GapDeclaredLost,
    GapFilled,
    GapOpened,
    Kind,
    Outcome,
    SequencePolicy,
    TopicCursor,
    advance,
    classify,
)
from pipeline.sequencing.state import Epoch, Gap

POLICY = SequencePolicy(reorder_window_ms=2_000, reset_idle_ms=1_000)
T0 = 1_700_000_000_000
_ids = count(1)


def dv(seq: int, ts: int, rx: int | None = None, page: int | None = None) -> Delivery:
    """A delivery with event time T0+ts, received at T0+rx (default: 5 ms after the event)."""
    received = ts + 5 if rx is None else rx
    return Delivery(next(_ids), seq, T0 + ts, T0 + received, page)


def kinds(outcomes: list[Outcome]) -> list[tuple[int, int, Kind]]:
    return [(o.epoch, o.seq, o.kind) for o in outcomes if isinstance(o, Classified)]


def gap_events(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not isinstance(o, Classified)]


def run(
    *deliveries: Delivery, now: int = 0, policy: SequencePolicy = POLICY
) -> tuple[TopicCursor, list[Outcome]]:
    return classify(deliveries, policy, now_ms=T0 + now)


# --- in order, late, duplicate -------------------------------------------------------------


def test_consecutive_numbers_are_in_order_with_no_gap_events() -> None:
    cursor, out = run(dv(1, 0), dv(2, 10), dv(3, 20), now=100_000)
    assert kinds(out) == [(1, 1, Kind.IN_ORDER), (1, 2, Kind.IN_ORDER), (1, 3, Kind.IN_ORDER)]
    assert gap_events(out) == []
    assert cursor.current is not None
    assert (cursor.current.highest, cursor.current.contiguous) == (3, 3)
    assert cursor.counters.received == cursor.counters.in_order == 3


def test_lower_number_after_a_higher_one_is_late_and_closes_the_gap() -> None:
    cursor, out = run(dv(1, 0), dv(3, 20), dv(2, 10, rx=40))
    assert kinds(out)[2] == (1, 2, Kind.LATE)
    assert gap_events(out) == [GapOpened(1, 2, 2, T0 + 25)]
    assert cursor.current is not None
    assert cursor.current.pending == ()
    assert cursor.current.contiguous == 3
    assert (cursor.counters.late, cursor.counters.lost) == (1, 0)


def test_a_late_number_splits_its_gap_in_two() -> None:
    cursor, _ = run(dv(1, 0), dv(6, 50), dv(3, 20, rx=60))
    assert cursor.current is not None
    assert cursor.current.pending == (Gap(2, 2, T0 + 55), Gap(4, 5, T0 + 55))
    assert cursor.current.contiguous == 1
    assert cursor.current.received_above == ((3, 3), (6, 6))


@pytest.mark.parametrize("seq", [1, 2, 4])
def test_a_number_received_twice_is_a_duplicate(seq: int) -> None:
    cursor, out = run(dv(1, 0), dv(2, 10), dv(4, 30), dv(seq, seq * 10, rx=50))
    assert kinds(out)[-1] == (1, seq, Kind.DUPLICATE)
    assert cursor.counters.duplicates == 1
    assert cursor.counters.received == 4


def test_duplicate_does_not_fill_or_open_gaps() -> None:
    _, out = run(dv(1, 0), dv(3, 20), dv(3, 20, rx=30))
    assert gap_events(out) == [GapOpened(1, 2, 2, T0 + 25)]


# --- gaps and the reorder window -----------------------------------------------------------


def test_gap_is_declared_lost_exactly_when_the_window_has_passed() -> None:
    cursor, out = run(dv(1, 0), dv(3, 20), now=25 + 1_999)
    assert not any(isinstance(o, GapDeclaredLost) for o in out)
    assert cursor.counters.lost == 0
    cursor, out = advance(cursor, [], T0 + 25 + 2_000, POLICY)
    assert out == [GapDeclaredLost(1, 2, 2)]
    assert cursor.counters.lost == 1
    assert cursor.current is not None
    assert (cursor.current.pending, cursor.current.lost) == ((), ((2, 2),))
    assert cursor.current.contiguous == 3


def test_window_is_measured_on_received_time_and_declarations_precede_the_delivery() -> None:
    late = dv(4, 30, rx=2_025)
    _, out = run(dv(1, 0), dv(3, 20), late)
    assert out[-2:] == [GapDeclaredLost(1, 2, 2), Classified(late.event_id, 1, 4, Kind.IN_ORDER)]


def test_empty_advance_is_a_beat_that_only_declares_expired_gaps() -> None:
    cursor, _ = run(dv(1, 0), dv(5, 40))
    same, out = advance(cursor, [], T0, POLICY)
    assert (same, out) == (cursor, [])
    later, out = advance(cursor, [], T0 + 10_000, POLICY)
    assert out == [GapDeclaredLost(1, 2, 4)]
    assert later.counters.lost == 3
    assert later.clock_ms == T0 + 10_000


def test_a_horizon_holds_declarations_back_until_it_passes_the_window_too() -> None:
    cursor, _ = run(dv(1, 0), dv(3, 20))  # the gap at 2 opens at T0 + 25
    backlog = T0 + 100  # a delivery received then is not stored yet
    held, out = advance(cursor, [dv(4, 30, rx=9_000)], T0 + 9_000, POLICY, horizon_ms=backlog)
    assert not any(isinstance(o, GapDeclaredLost) for o in out)
    assert held.clock_ms == T0 + 9_000  # the clock moves on; only declaring waits
    _, out = advance(held, [], T0 + 9_000, POLICY, horizon_ms=T0 + 25 + 2_000)
    assert out == [GapDeclaredLost(1, 2, 2)]
    _, out = advance(held, [dv(2, 10, rx=9_100)], T0 + 9_100, POLICY, horizon_ms=T0 + 9_100)
    assert kinds(out) == [(1, 2, Kind.LATE)]  # it was on its way: late, never lost


def test_clock_never_moves_back() -> None:
    cursor, _ = run(dv(1, 0), now=500)
    cursor, _ = advance(cursor, [], T0 + 100, POLICY)
    assert cursor.clock_ms == T0 + 500


def test_count_window_declares_a_gap_once_n_higher_numbers_arrived() -> None:
    policy = SequencePolicy(reorder_window_ms=10**9, reorder_window_count=3)
    _, out = run(dv(1, 0), dv(3, 20), dv(4, 30), policy=policy)
    assert not any(isinstance(o, GapDeclaredLost) for o in out)
    _, out = run(dv(1, 0), dv(3, 20), dv(4, 30), dv(5, 40), policy=policy)
    assert gap_events(out)[-1] == GapDeclaredLost(1, 2, 2)
    assert out[-1] == GapDeclaredLost(1, 2, 2)


def test_numbers_before_an_epochs_first_arrival_are_a_gap() -> None:
    cursor, out = run(dv(3, 0), now=10_000)
    assert kinds(out) == [(1, 3, Kind.IN_ORDER)]
    assert gap_events(out) == [GapOpened(1, 1, 2, T0 + 5), GapDeclaredLost(1, 1, 2)]
    assert cursor.counters.lost == 2


def test_number_declared_lost_that_arrives_later_is_undeclared() -> None:
    cursor, _ = run(dv(1, 0), dv(5, 40), now=10_000)
    found = dv(3, 20, rx=10_001)
    cursor, out = advance(cursor, [found], T0 + 10_001, POLICY)
    assert out == [Classified(found.event_id, 1, 3, Kind.LATE), GapFilled(1, 3)]
    assert (cursor.counters.lost, cursor.counters.recovered, cursor.counters.late) == (2, 1, 1)
    assert cursor.current is not None
    assert cursor.current.lost == ((2, 2), (4, 4))
    cursor, out = advance(cursor, [dv(3, 20, rx=10_002)], T0 + 10_002, POLICY)
    assert kinds(out) == [(1, 3, Kind.DUPLICATE)]
    assert cursor.counters.lost == 2


def test_lost_memory_is_bounded_and_forgotten_numbers_read_as_duplicates() -> None:
    policy = SequencePolicy(reorder_window_ms=1, lost_memory_ranges=2)
    cursor, _ = run(dv(1, 0), dv(3, 20), dv(5, 40), dv(7, 60), now=1_000, policy=policy)
    assert cursor.current is not None
    assert cursor.current.lost == ((4, 4), (6, 6))
    assert cursor.counters.lost == 3
    cursor, out = advance(cursor, [dv(2, 10, rx=2_000)], T0 + 2_000, policy)
    assert kinds(out) == [(1, 2, Kind.DUPLICATE)]
    assert cursor.counters.lost == 3


def test_too_many_open_gaps_declares_the_lowest() -> None:
    policy = SequencePolicy(max_open_gaps=2)
    cursor, out = run(dv(1, 0), dv(3, 20), dv(5, 40), dv(7, 60), policy=policy)
    assert [o for o in out if isinstance(o, GapDeclaredLost)] == [GapDeclaredLost(1, 2, 2)]
    assert cursor.current is not None
    assert [(g.first, g.last) for g in cursor.current.pending] == [(4, 4), (6, 6)]


# --- number zero -------------------------------------------------------------------------


def test_zero_is_counted_when_it_arrives_and_never_a_gap_when_it_does_not() -> None:
    cursor, out = run(dv(0, 0), dv(1, 10), dv(0, 0, rx=20), now=10_000)
    assert kinds(out) == [(1, 0, Kind.IN_ORDER), (1, 1, Kind.IN_ORDER), (1, 0, Kind.DUPLICATE)]
    assert gap_events(out) == []
    cursor, out = run(dv(1, 10), dv(0, 0, rx=20), now=10_000)
    assert kinds(out)[1] == (1, 0, Kind.LATE)
    assert cursor.counters.lost == 0


# --- resets without a page ---------------------------------------------------------------


def test_lower_number_after_idle_time_starts_a_new_epoch() -> None:
    cursor, out = run(dv(1, 0), dv(2, 10), dv(3, 20), dv(1, 1_020), dv(2, 1_030))
    assert kinds(out)[3:] == [(2, 1, Kind.RESET), (2, 2, Kind.IN_ORDER)]
    assert cursor.counters.resets == 1
    assert cursor.current is not None
    assert cursor.previous is not None
    assert (cursor.current.number, cursor.current.start_seq) == (2, 1)
    assert cursor.current.start_ts_ms == T0 + 1_020
    assert cursor.previous.highest == 3


def test_reset_needs_the_full_idle_time() -> None:
    _, out = run(dv(1, 0), dv(2, 10), dv(3, 20), dv(1, 1_019))
    assert kinds(out)[3] == (1, 1, Kind.DUPLICATE)
    _, out = run(dv(1, 0), dv(2, 10), dv(3, 20), dv(3, 1_020))
    assert kinds(out)[3] == (2, 3, Kind.RESET)


def test_lower_number_without_time_jump_is_late_not_a_reset() -> None:
    cursor, out = run(dv(5, 500), dv(1, 100, rx=600))
    assert kinds(out) == [(1, 5, Kind.IN_ORDER), (1, 1, Kind.LATE)]
    assert cursor.counters.resets == 0


def test_higher_number_after_idle_time_continues_the_epoch_with_a_gap() -> None:
    cursor, out = run(dv(1, 0), dv(2, 10), dv(4, 60_000))
    assert kinds(out)[2] == (1, 4, Kind.IN_ORDER)
    assert GapOpened(1, 3, 3, T0 + 60_005) in out
    assert cursor.counters.resets == 0


def test_new_epoch_starting_above_one_opens_a_gap_from_one() -> None:
    cursor, out = run(dv(1, 0), dv(2, 10), dv(3, 20), dv(2, 5_000), now=60_000)
    assert kinds(out)[3] == (2, 2, Kind.RESET)
    assert GapDeclaredLost(2, 1, 1) in out
    assert cursor.counters.lost == 1


def test_straggler_of_previous_epoch_is_placed_there_not_counted_as_a_reset() -> None:
    cursor, out = run(
        dv(1, 0), dv(3, 20), dv(4, 30),  # 2 is late
        dv(1, 5_000), dv(2, 5_010),  # new epoch
        dv(2, 10, rx=5_020),  # the old epoch's 2, finally
        dv(4, 30, rx=5_030),  # and a duplicate of its 4
        dv(5, 40, rx=5_040),  # and its 5, above its highest
    )  # fmt: skip
    assert kinds(out)[3:] == [
        (2, 1, Kind.RESET),
        (2, 2, Kind.IN_ORDER),
        (1, 2, Kind.LATE),
        (1, 4, Kind.DUPLICATE),
        (1, 5, Kind.IN_ORDER),
    ]
    assert cursor.counters.resets == 1
    assert (cursor.counters.lost, cursor.counters.recovered) == (0, 1)  # 2 was declared, then came


def test_second_reset_retires_the_previous_epoch_and_declares_its_open_gaps() -> None:
    policy = SequencePolicy(reorder_window_ms=10**9, reset_idle_ms=1_000)
    cursor, out = run(
        dv(1, 0), dv(3, 20),  # epoch 1, 2 open
        dv(1, 5_000),  # epoch 2
        dv(1, 10_000),  # epoch 3 retires epoch 1
        policy=policy,
    )  # fmt: skip
    assert kinds(out)[-1] == (3, 1, Kind.RESET)
    assert out[-2] == GapDeclaredLost(1, 2, 2)
    assert cursor.current is not None
    assert cursor.previous is not None
    assert (cursor.previous.number, cursor.current.number) == (2, 3)
    assert cursor.counters.resets == 2


# --- pages -------------------------------------------------------------------------------


def test_new_page_is_a_reset_even_without_a_time_jump() -> None:
    cursor, out = run(dv(1, 0, page=7), dv(2, 10, page=7), dv(1, 20, page=8))
    assert kinds(out)[2] == (2, 1, Kind.RESET)
    assert cursor.current is not None
    assert cursor.current.page == 8


def test_same_page_wins_over_the_time_rule() -> None:
    _, out = run(dv(1, 0, page=7), dv(2, 10, page=7), dv(1, 60_000, page=7))
    assert kinds(out)[2] == (1, 1, Kind.DUPLICATE)


def test_previous_page_goes_to_the_previous_epoch() -> None:
    cursor, out = run(dv(1, 0, page=7), dv(3, 20, page=7), dv(1, 30, page=8), dv(2, 10, page=7))
    assert kinds(out)[3] == (1, 2, Kind.LATE)
    assert cursor.counters.resets == 1


def test_retired_page_is_stale_and_does_not_retrigger_a_reset() -> None:
    cursor, out = run(
        dv(1, 0, page=7), dv(1, 10, page=8), dv(1, 20, page=9), dv(2, 5, page=7),
    )  # fmt: skip
    assert kinds(out)[3] == (1, 2, Kind.STALE)
    assert cursor.retired_pages == ((7, 1),)
    assert (cursor.counters.resets, cursor.counters.stale) == (2, 1)


def test_retired_pages_list_is_bounded() -> None:
    policy = SequencePolicy(retired_pages_kept=2)
    cursor, _ = run(*(dv(1, i, page=100 + i) for i in range(6)), policy=policy)
    assert cursor.retired_pages == ((102, 3), (103, 4))


def test_webhook_epoch_adopts_the_page_of_a_subscription_item() -> None:
    cursor, out = run(dv(1, 0), dv(2, 10, page=7), dv(3, 20), dv(1, 30, page=8))
    assert kinds(out)[1] == (1, 2, Kind.IN_ORDER)
    assert kinds(out)[3] == (2, 1, Kind.RESET)
    assert cursor.previous is not None
    assert cursor.previous.page == 7


def test_unknown_page_never_joins_an_epoch_that_has_another_page() -> None:
    cursor, out = run(dv(1, 0, page=7), dv(2, 10, page=7), dv(1, 5_000), dv(3, 20, page=9))
    assert kinds(out)[2:] == [(2, 1, Kind.RESET), (3, 3, Kind.RESET)]
    assert cursor.current is not None
    assert cursor.current.page == 9
    assert cursor.retired_pages == ((7, 1),)


def test_page_zero_means_no_page() -> None:
    _, out = run(dv(1, 0, page=0), dv(2, 10, page=0), dv(1, 20, page=0))
    assert kinds(out)[2] == (1, 1, Kind.DUPLICATE)


# --- state, JSON, validation -------------------------------------------------------------


def test_cursor_round_trips_through_json_text() -> None:
    cursor, _ = run(
        dv(1, 0, page=7), dv(4, 30, page=7), dv(0, 0, page=8), dv(3, 30, page=8),
        dv(1, 5, page=9), dv(9, 90, page=9), dv(5, 60, page=9),
    )  # fmt: skip
    text = json.dumps(cursor.to_json())
    assert TopicCursor.from_json(json.loads(text)) == cursor
    assert TopicCursor.from_json(TopicCursor().to_json()) == TopicCursor()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(format=99),
        lambda d: d.pop("counters"),
        lambda d: d.update(clock_ms="soon"),
        lambda d: d["current"].update(pending=[[1, 2]]),
        lambda d: d["current"].update(highest=True),
    ],
)
def test_malformed_cursor_json_is_rejected(mutate: Callable[[dict[str, Any]], object]) -> None:
    cursor, _ = run(dv(1, 0), dv(4, 30))
    data = json.loads(json.dumps(cursor.to_json()))
    mutate(data)
    with pytest.raises(ValueError, match="cursor"):
        TopicCursor.from_json(data)


def test_counters_missing_from_old_json_default_to_zero() -> None:
    data = TopicCursor().to_json()
    del data["counters"]["stale"]
    assert TopicCursor.from_json(data).counters.stale == 0


def test_advance_leaves_the_given_cursor_unchanged() -> None:
    cursor, _ = run(dv(1, 0), dv(4, 30))
    before = cursor.to_json()
    advance(cursor, [dv(2, 10, rx=40), dv(9, 90)], T0 + 99_999, POLICY)
    assert cursor.to_json() == before


def test_received_above_lists_ranges_between_and_after_gaps() -> None:
    epoch = Epoch(1, None, 1, 0, 0, highest=20, pending=(Gap(3, 4, 0), Gap(8, 8, 0)))
    assert epoch.contiguous == 2
    assert epoch.received_above == ((5, 7), (9, 20))


@pytest.mark.parametrize(
    "field", ["reorder_window_ms", "reorder_window_count", "reset_idle_ms", "max_open_gaps"]
)
def test_policy_rejects_non_positive_values(field: str) -> None:
    with pytest.raises(ValueError, match=f"SequencePolicy.{field} must be > 0, got 0"):
        SequencePolicy(**{field: 0})


def test_delivery_rejects_a_negative_number() -> None:
    with pytest.raises(ValueError, match="seq must be >= 0, got -1"):
        Delivery("e", -1, 0, 0)


def test_long_lossy_stream_keeps_the_cursor_small() -> None:
    policy = SequencePolicy(reorder_window_ms=100, lost_memory_ranges=32)
    cursor, sizes, lost = TopicCursor(), [], 0
    for start in range(1, 30_001, 500):
        batch = [dv(s, s, rx=s) for s in range(start, start + 500) if s % 7]
        cursor, out = advance(cursor, batch, T0 + start + 499, policy)
        lost += sum(o.last - o.first + 1 for o in out if isinstance(o, GapDeclaredLost))
        sizes.append(len(json.dumps(cursor.to_json())))
    cursor, out = advance(cursor, [], T0 + 10**6, policy)
    lost += sum(o.last - o.first + 1 for o in out if isinstance(o, GapDeclaredLost))
    assert lost == cursor.counters.lost == 30_000 // 7
    assert max(sizes) < 1_500
