"""Pure parts of the ordered driver: which new events may be late, and how peek rows map."""

from __future__ import annotations

from pipeline.workflows.route_cursors import late_candidates

CURSOR = (2, 10, 500)  # epoch 2, sequence number 10, passed at event 500


def test_events_ahead_of_the_cursor_need_no_question() -> None:
    places = {601: (2, 11), 602: (2, 12), 603: (3, 1)}
    assert late_candidates([601, 602, 603], places, CURSOR) == []


def test_events_behind_or_at_the_cursor_are_candidates() -> None:
    places = {601: (2, 9), 602: (1, 40), 603: (2, 11), 500: (2, 10)}
    assert late_candidates([601, 602, 603, 500], places, CURSOR) == [601, 602, 500]


def test_the_same_number_as_the_cursor_orders_by_event_id() -> None:
    # A second event with the cursor's number: after the cursor's own event by id, so ahead.
    assert late_candidates([499, 501], {499: (2, 10), 501: (2, 10)}, CURSOR) == [499]


def test_events_of_unknown_place_or_without_an_epoch_are_candidates() -> None:
    assert late_candidates([601, 602], {602: (None, 3)}, CURSOR) == [601, 602]


def test_a_peek_row_lines_up_with_the_peek_and_event_fields() -> None:
    from dataclasses import fields

    from pipeline.workflows.route_cursor_sql import EVENT_COLUMNS, PEEK_CURSOR_COLUMNS
    from pipeline.workflows.route_cursors import EventRow, Peek

    assert tuple(f.name for f in fields(Peek))[: len(PEEK_CURSOR_COLUMNS)] == PEEK_CURSOR_COLUMNS
    assert tuple(f.name for f in fields(EventRow)) == tuple(c.name for c in EVENT_COLUMNS)
