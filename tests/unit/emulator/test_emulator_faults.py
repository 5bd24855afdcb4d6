"""Fault injection decisions: pure, and deterministic under a seed."""

from __future__ import annotations

import pytest

from pipeline.emulator.faults import FaultPlan, FaultRegistry, FaultSpec, derive_seed


def decisions(spec: FaultSpec, seed: int, count: int) -> list[tuple[int, float]]:
    plan: FaultPlan[int] = FaultPlan(spec, seed)
    return [(d.copies, d.delay_s) for d in (plan.decide() for _ in range(count))]


@pytest.mark.parametrize(
    "options",
    [{"drop": -0.1}, {"drop": 1.5}, {"duplicate": 2}, {"delay_ms": -1}, {"reorder_window": -3}],
)
def test_out_of_range_options_are_rejected(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        FaultSpec.from_mapping(options)


def test_unknown_option_is_rejected_with_the_known_ones_named() -> None:
    with pytest.raises(ValueError, match=r"unknown fault option.*'explode'.*drop"):
        FaultSpec.from_mapping({"explode": 1})


def test_default_spec_is_inactive_and_any_option_activates_it() -> None:
    assert not FaultSpec().active
    assert FaultSpec(delay_ms=1).active
    assert FaultSpec(reset_every=2).active


def test_same_seed_gives_the_same_decisions_and_another_seed_does_not() -> None:
    spec = FaultSpec(drop=0.3, duplicate=0.3, delay_ms=5)
    assert decisions(spec, 7, 500) == decisions(spec, 7, 500)
    assert decisions(spec, 7, 500) != decisions(spec, 8, 500)


def test_drop_and_duplicate_fractions_are_honoured() -> None:
    made = decisions(FaultSpec(drop=0.25, duplicate=0.5), 11, 20_000)
    dropped = sum(copies == 0 for copies, _ in made) / len(made)
    doubled = sum(copies == 2 for copies, _ in made) / (len(made) * 0.75)
    assert 0.23 < dropped < 0.27
    assert 0.47 < doubled < 0.53


def test_delay_applies_to_every_delivery_and_nothing_is_dropped_without_drop() -> None:
    assert set(decisions(FaultSpec(delay_ms=250), 1, 100)) == {(1, 0.25)}


def test_reorder_holds_a_window_then_releases_a_shuffled_permutation() -> None:
    plan: FaultPlan[int] = FaultPlan(FaultSpec(reorder_window=4), 3)
    released = [plan.reorder(n) for n in range(1, 13)]
    assert [len(r) for r in released] == [0, 0, 0, 4] * 3
    windows = [r for r in released if r]
    assert [sorted(w) for w in windows] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert any(w != sorted(w) for w in windows)


def test_drain_releases_a_partial_window() -> None:
    plan: FaultPlan[str] = FaultPlan(FaultSpec(reorder_window=10), 3)
    assert plan.reorder("a") == []
    assert plan.reorder("b") == []
    assert plan.holding == 2
    assert sorted(plan.drain()) == ["a", "b"]
    assert plan.holding == 0


def test_no_reorder_window_passes_items_straight_through() -> None:
    plan: FaultPlan[int] = FaultPlan(FaultSpec(drop=0.1), 3)
    assert [plan.reorder(n) for n in range(3)] == [[0], [1], [2]]


def test_reset_is_due_exactly_every_n_publishes() -> None:
    plan: FaultPlan[int] = FaultPlan(FaultSpec(reset_every=3), 0)
    assert [plan.reset_due() for _ in range(7)] == [False, False, True, False, False, True, False]
    never: FaultPlan[int] = FaultPlan(FaultSpec(drop=0.5), 0)
    assert not any(never.reset_due() for _ in range(10))


def test_derived_seeds_are_stable_and_differ_per_topic() -> None:
    # A literal: Python's str hash is salted per process, sha256 is not.
    assert derive_seed(1, "c", "t") == 0x902EB2CE95B794CD
    assert len({derive_seed(1, "c", t) for t in ("a", "b", "c")}) == 3
    assert derive_seed(1, "c", "t") != derive_seed(2, "c", "t")


def test_registry_prefers_exact_matches_then_globs() -> None:
    registry: FaultRegistry[int] = FaultRegistry(seed=5)
    registry.set("*", "room-*", FaultSpec(drop=0.5))
    registry.set("chat", "room-1", FaultSpec(delay_ms=10))
    exact = registry.plan("chat", "room-1")
    globbed = registry.plan("other", "room-9")
    assert exact is not None
    assert exact.spec == FaultSpec(delay_ms=10)
    assert globbed is not None
    assert globbed.spec == FaultSpec(drop=0.5)
    assert registry.plan("chat", "lobby") is None


def test_registry_plans_are_deterministic_per_topic_whatever_else_happens() -> None:
    spec = FaultSpec(drop=0.5)
    first: FaultRegistry[int] = FaultRegistry(seed=42)
    first.set("*", "*", spec)
    second: FaultRegistry[int] = FaultRegistry(seed=42)
    second.set("*", "*", spec)
    noise = second.plan("c", "other")
    assert noise is not None
    for _ in range(50):
        noise.decide()
    plan_a, plan_b = first.plan("c", "t"), second.plan("c", "t")
    assert plan_a is not None
    assert plan_b is not None
    assert [plan_a.decide() for _ in range(100)] == [plan_b.decide() for _ in range(100)]


def test_clearing_faults_removes_them_and_reports_whether_anything_was_removed() -> None:
    registry: FaultRegistry[int] = FaultRegistry(seed=1)
    registry.set("c", "t", FaultSpec(drop=1.0))
    assert registry.clear("c", "nope") is False
    assert registry.clear("c", "t") is True
    assert registry.plan("c", "t") is None
    registry.set("c", "t", FaultSpec(drop=1.0))
    assert registry.clear(all_patterns=True) is True
    assert registry.specs() == []


def test_inactive_spec_gives_no_plan() -> None:
    registry: FaultRegistry[int] = FaultRegistry(seed=1)
    registry.set("*", "*", FaultSpec())
    assert registry.plan("c", "t") is None
