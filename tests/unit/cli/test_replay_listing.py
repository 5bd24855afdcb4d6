"""A dry run lists the first runs and says how many it left out."""

from __future__ import annotations

from pipeline.cli.replay import listing


def test_listing_shows_the_first_runs_and_counts_the_rest() -> None:
    pairs = [("relay", i) for i in range(1, 299)]
    lines = listing(pairs)
    assert lines[:2] == ["  route=relay event=1", "  route=relay event=2"]
    assert len(lines) == 21
    assert lines[-1] == "  … and 278 more"


def test_listing_of_few_runs_has_no_remainder_line() -> None:
    assert listing([("relay", 1), ("relay", 2)], shown=2) == [
        "  route=relay event=1",
        "  route=relay event=2",
    ]
