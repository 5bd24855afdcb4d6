"""Property tests for pipeline.sequencing: generated streams with known loss, duplication, reorder.

A scenario is one or more epochs of consecutive numbers with event times, a dropped subset, some
duplicated copies, and an arrival order where no copy moves more than MAX_SHIFT numbers later. It
is fed in random chunks, through JSON between calls, with now_ms kept to its contract (no later
delivery was received before it), and checked after a final beat past every reorder window.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipeline.sequencing.rules import (
    Classified,
    Delivery,
    GapDeclaredLost,
    GapFilled,
    Kind,
    Outcome,
    SequencePolicy,
    TopicCursor,
    advance,
    classify,
)
from pipeline.sequencing.state import Epoch

IDLE_MS = 1_000
MAX_SHIFT = 4  # numbers a copy may arrive after its place
MAX_STEP_MS = 100  # event time between consecutive numbers: MAX_SHIFT steps stay under IDLE_MS
MAX_LEN = 30
FOREVER_MS = 10**7

POLICIES = {
    "patient": SequencePolicy(reorder_window_ms=FOREVER_MS, reset_idle_ms=IDLE_MS),
    "counted": SequencePolicy(
        FOREVER_MS, reorder_window_count=MAX_SHIFT + 1, reset_idle_ms=IDLE_MS
    ),
    "default": SequencePolicy(reorder_window_ms=2_000, reset_idle_ms=IDLE_MS),
    "hasty": SequencePolicy(reorder_window_ms=1, reset_idle_ms=IDLE_MS),
}

quick = settings(max_examples=100, deadline=None)


@dataclass(frozen=True)
class Scenario:
    deliveries: list[Delivery]
    epoch_of: dict[int | str, int]
    dropped: frozenset[tuple[int, int]]
    delivered: frozenset[tuple[int, int]]
    duplicates: int
    epochs: int


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Epochs of 1..MAX_LEN numbers; never drops 0 or an epoch's last number (unknowable)."""
    rnd = draw(st.randoms(use_true_random=True))  # cheap noise; the shape above it shrinks
    paged = draw(st.booleans())
    shift = draw(st.integers(0, MAX_SHIFT))
    drop_rate = draw(st.sampled_from([0.0, 0.1, 0.3, 0.7]))
    dup_rate = draw(st.sampled_from([0.0, 0.1, 0.3]))
    epochs = draw(st.integers(1, 3))
    ts = draw(st.integers(0, 2**40))
    copies: list[tuple[int, float, int, int, int]] = []  # key, tie, epoch, seq, event ts
    dropped, delivered, duplicates, slot = set(), set(), 0, 0
    for epoch in range(1, epochs + 1):
        if epoch > 1:  # without pages, a reset needs an idle period
            ts += draw(st.integers(0 if paged else IDLE_MS, 4 * IDLE_MS))
        start = draw(st.integers(0, 1))
        last = start + draw(st.integers(MAX_SHIFT + 1, MAX_LEN)) - 1
        for seq in range(start, last + 1):
            ts += rnd.randint(0, MAX_STEP_MS)
            if seq not in (0, last) and rnd.random() < drop_rate:
                dropped.add((epoch, seq))
            else:
                delivered.add((epoch, seq))
                n = 1 + (rnd.random() < dup_rate) + (rnd.random() < dup_rate / 3)
                for _ in range(n):
                    copies.append((slot + rnd.randint(0, shift), rnd.random(), epoch, seq, ts))
                duplicates += n - 1
            slot += 1
    copies.sort()
    deliveries, received = [], copies[0][4]
    epoch_of: dict[int | str, int] = {}
    for event_id, (_, _, epoch, seq, event_ts) in enumerate(copies):
        received = max(received + rnd.randint(0, 20), event_ts + rnd.randint(0, 5))
        deliveries.append(Delivery(event_id, seq, event_ts, received, epoch if paged else None))
        epoch_of[event_id] = epoch
    _assume_epochs_separable(deliveries, epoch_of, paged)
    return Scenario(
        deliveries, epoch_of, frozenset(dropped), frozenset(delivered), duplicates, epochs
    )


def _assume_epochs_separable(
    deliveries: list[Delivery], epoch_of: dict[int | str, int], paged: bool
) -> None:
    """Epochs are numbered by first arrival, and a cursor tracks two at a time. Without a page,
    a new epoch's first arrival must also fall back below the old epoch's highest to be seen."""
    highest: dict[int, int] = {}
    for d in deliveries:
        epoch = epoch_of[d.event_id]
        if epoch not in highest:
            assume(epoch == len(highest) + 1)
            assume(paged or epoch == 1 or d.seq <= highest[epoch - 1])
        assume(epoch >= len(highest) - 1)
        highest[epoch] = max(highest.get(epoch, -1), d.seq)


@st.composite
def arbitrary_deliveries(draw: st.DrawFn) -> list[Delivery]:
    """Any numbers, pages and time jumps: nothing is promised but the invariants."""
    rnd = draw(st.randoms(use_true_random=True))
    ts = received = 10**9
    deliveries = []
    for event_id in range(draw(st.integers(0, 60))):
        ts += rnd.choice([0, 5, 50, 50, 50, -300, 1_500, -5_000, 20_000])
        received = max(received + rnd.randint(-300, 400), ts)  # several receivers: not monotone
        page = rnd.choice([None, None, None, None, None, 0, 1, 2, 3])
        deliveries.append(Delivery(event_id, rnd.randint(0, 20), ts, received, page))
    return deliveries


def feed_in_chunks(
    deliveries: Sequence[Delivery],
    policy: SequencePolicy,
    rnd: random.Random,
    final_now_ms: int,
) -> tuple[TopicCursor, list[Outcome], list[TopicCursor]]:
    """Feed random chunks, storing the cursor as JSON text between calls as the sequencer does."""
    cuts = sorted(rnd.sample(range(1, len(deliveries)), min(6, max(0, len(deliveries) - 1))))
    bounds = [0, *cuts, len(deliveries)]
    text, outcomes, seen = json.dumps(TopicCursor().to_json()), [], []
    for lo, hi in itertools.pairwise(bounds):
        chunk = deliveries[lo:hi]
        if hi < len(deliveries):  # the contract: nothing still to come was received before now_ms
            bound = min(d.received_ts_ms for d in deliveries[hi:])
            now_ms = rnd.randint(bound - 1_000, bound)
        else:
            now_ms = final_now_ms
        cursor, out = advance(TopicCursor.from_json(json.loads(text)), chunk, now_ms, policy)
        check_invariants(cursor, policy)
        outcomes += out
        seen.append(cursor)
        text = json.dumps(cursor.to_json())
    return TopicCursor.from_json(json.loads(text)), outcomes, seen


def check_invariants(cursor: TopicCursor, policy: SequencePolicy) -> None:
    """What every cursor satisfies, whatever it was fed; together they bound its size."""
    c = cursor.counters
    assert c.received == c.in_order + c.late + c.duplicates + c.resets + c.stale
    assert 0 <= c.recovered <= c.late
    assert c.lost >= 0
    assert len(cursor.retired_pages) <= policy.retired_pages_kept
    if cursor.current is None:
        assert cursor.previous is None
        assert c.received == 0
        return
    assert cursor.current.number == c.resets + 1
    if cursor.previous is not None:
        assert cursor.previous.number == cursor.current.number - 1
    for epoch in (cursor.previous, cursor.current):
        if epoch is not None:
            check_epoch(epoch, cursor.clock_ms, policy)


def check_epoch(epoch: Epoch, clock_ms: int, policy: SequencePolicy) -> None:
    assert len(epoch.pending) <= policy.max_open_gaps
    assert len(epoch.lost) <= policy.lost_memory_ranges
    floor = 0
    for gap in epoch.pending:
        assert floor < gap.first <= gap.last < epoch.highest
        assert gap.noticed_ms + policy.reorder_window_ms > clock_ms
        floor = gap.last + 1  # a received number separates two gaps
    assert all(a.noticed_ms <= b.noticed_ms for a, b in itertools.pairwise(epoch.pending))
    floor = 0
    for first, last in epoch.lost:
        assert floor < first <= last <= epoch.contiguous
        floor = last + 1


def expected_kinds(scenario: Scenario) -> list[Kind]:
    """Kinds from the generator's truth: a new epoch's first arrival resets, then by max so far."""
    seen: dict[int, set[int]] = {}
    kinds = []
    for d in scenario.deliveries:
        epoch = scenario.epoch_of[d.event_id]
        earlier = seen.setdefault(epoch, set())
        if not earlier:
            kinds.append(Kind.RESET if epoch > 1 else Kind.IN_ORDER)
        elif d.seq in earlier:
            kinds.append(Kind.DUPLICATE)
        else:
            kinds.append(Kind.IN_ORDER if d.seq > max(earlier) else Kind.LATE)
        earlier.add(d.seq)
    return kinds


def net_lost(outcomes: list[Outcome]) -> set[tuple[int, int]]:
    """(epoch, seq) declared lost and not found again."""
    lost: set[tuple[int, int]] = set()
    for o in outcomes:
        if isinstance(o, GapDeclaredLost):
            numbers = {(o.epoch, seq) for seq in range(o.first, o.last + 1)}
            assert not numbers & lost
            lost |= numbers
        elif isinstance(o, GapFilled):
            lost.remove((o.epoch, o.seq))
    return lost


def by_epoch(outcomes: list[Outcome]) -> dict[int, list[Outcome]]:
    grouped: dict[int, list[Outcome]] = {}
    for o in outcomes:
        grouped.setdefault(o.epoch, []).append(o)
    return grouped


@quick
@given(scenarios(), st.sampled_from(sorted(POLICIES)), st.randoms(use_true_random=False))
def test_generated_loss_duplication_and_reorder_are_classified_exactly(
    scenario: Scenario, policy_name: str, rnd: random.Random
) -> None:
    policy = POLICIES[policy_name]
    final = scenario.deliveries[-1].received_ts_ms + FOREVER_MS
    cursor, outcomes, _ = feed_in_chunks(scenario.deliveries, policy, rnd, final)
    classified = [o for o in outcomes if isinstance(o, Classified)]
    placed = [(o.epoch, o.seq) for o in classified if o.kind != Kind.DUPLICATE]

    assert net_lost(outcomes) == scenario.dropped
    assert cursor.counters.lost == len(scenario.dropped)
    assert cursor.counters.duplicates == scenario.duplicates
    assert Counter(o.kind for o in classified)[Kind.DUPLICATE] == scenario.duplicates
    assert cursor.counters.resets == scenario.epochs - 1
    assert cursor.counters.stale == 0
    assert len(placed) == len(set(placed))
    assert set(placed) == scenario.delivered
    assert all(o.epoch == scenario.epoch_of[o.event_id] for o in classified)
    assert [o.event_id for o in classified] == [d.event_id for d in scenario.deliveries]
    assert [o.kind for o in classified] == expected_kinds(scenario)
    assert all(not e.pending for e in (cursor.current, cursor.previous) if e is not None)
    if policy_name in ("patient", "counted"):  # windows wider than any reorder here
        assert not any(isinstance(o, GapFilled) for o in outcomes)


@quick
@given(scenarios(), st.sampled_from(sorted(POLICIES)), st.randoms(use_true_random=False))
def test_any_chunking_gives_the_same_cursor_and_outcomes(
    scenario: Scenario, policy_name: str, rnd: random.Random
) -> None:
    policy = POLICIES[policy_name]
    final = scenario.deliveries[-1].received_ts_ms + rnd.choice([0, 1_000, FOREVER_MS])
    whole, whole_out = classify(scenario.deliveries, policy, now_ms=final)
    chunked, chunked_out, _ = feed_in_chunks(scenario.deliveries, policy, rnd, final)
    assert chunked == whole
    assert [o for o in chunked_out if isinstance(o, Classified)] == [
        o for o in whole_out if isinstance(o, Classified)
    ]
    assert by_epoch(chunked_out) == by_epoch(whole_out)


@quick
@given(
    arbitrary_deliveries(),
    st.builds(
        SequencePolicy,
        reorder_window_ms=st.integers(1, 1_000),
        reorder_window_count=st.none() | st.integers(1, 4),
        reset_idle_ms=st.integers(1, 3_000),
        max_open_gaps=st.integers(1, 3),
        lost_memory_ranges=st.integers(1, 3),
        retired_pages_kept=st.integers(1, 2),
    ),
    st.randoms(use_true_random=False),
)
def test_arbitrary_input_keeps_invariants_and_chunking_invariance(
    deliveries: list[Delivery], policy: SequencePolicy, rnd: random.Random
) -> None:
    final = (deliveries[-1].received_ts_ms if deliveries else 0) + rnd.randint(0, 5_000)
    whole, whole_out = classify(deliveries, policy, now_ms=final)
    check_invariants(whole, policy)
    chunked, chunked_out, _ = feed_in_chunks(deliveries, policy, rnd, final)
    assert chunked == whole
    assert by_epoch(chunked_out) == by_epoch(whole_out)
    assert whole.counters.received == len(deliveries)
    assert TopicCursor.from_json(json.loads(json.dumps(whole.to_json()))) == whole
