"""Subscription items, the fair share of topics among listeners, and [[subscriptions]]."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from pipeline.errors import RoutesError
from pipeline.models import EventSource
from pipeline.sources.items import encode_item, subscription_key, subscription_rows
from pipeline.sources.leases import fair_share
from pipeline.workflows.routes import parse_routes

NOW_MS = 1_765_000_000_000


def test_text_and_binary_items_become_subscription_rows_keyed_by_page_and_number() -> None:
    items = [
        encode_item("c", "t", 7, 41, "hello", NOW_MS),
        encode_item("c", "t", 7, 42, b"\x00\xff", NOW_MS + 1),
    ]
    rows, poison = subscription_rows(items)
    assert poison == []
    assert [row["idempotency_key"] for row in rows] == ["p7:41", "p7:42"]
    assert rows[0]["text"] == "hello"
    assert base64.b64decode(rows[1]["text"]) == b"\x00\xff"
    assert {row["source"] for row in rows} == {EventSource.SUBSCRIPTION}
    assert [row["event_timestamp"] for row in rows] == [NOW_MS, NOW_MS + 1]
    assert subscription_key(7, 41) == "p7:41"


@pytest.mark.parametrize(
    "item",
    [
        ["c", "t", 7, 1, "x"],  # too short
        ["", "t", 7, 1, "x", False, NOW_MS],
        ["c", "t", -1, 1, "x", False, NOW_MS],
        ["c", "t", 7, "one", "x", False, NOW_MS],
        ["c", "t", 7, 1, "x", False, 10**18],  # a receive time no datetime holds
        ["c", "t", 7, 1, "nul\x00", False, NOW_MS],
        ["c", "t", 7, 1, 5, False, NOW_MS],
    ],
)
def test_a_malformed_item_is_poison_and_the_rest_of_the_batch_stays(item: list[object]) -> None:
    rows, poison = subscription_rows([item, encode_item("c", "t", 7, 2, "ok", NOW_MS)])
    assert [row["topic_sequence_number"] for row in rows] == [2]
    assert len(poison) == 1
    assert poison[0][0] == item


@pytest.mark.parametrize(
    ("topics", "listeners", "share"),
    [(10, 1, 10), (10, 2, 5), (10, 3, 4), (10, 0, 10), (3, 5, 1), (0, 2, 0)],
)
def test_fair_share_covers_every_topic(topics: int, listeners: int, share: int) -> None:
    assert fair_share(topics, listeners) == share
    assert share * max(1, listeners) >= topics


def test_subscriptions_are_exact_names_listed_once_in_file_order() -> None:
    text = (
        '[[subscriptions]]\ncache = "demo"\ntopics = ["b", "a", "b"]\n'
        '[[subscriptions]]\ncache = "other"\ntopics = ["a"]\n'
    )
    table = parse_routes(text, Path("routes.toml"))
    assert table.subscriptions == (("demo", "b"), ("demo", "a"), ("other", "a"))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('topics = ["a"]', "routes.toml:1: subscriptions need a cache name"),
        ('cache = "c"\ntopics = []', "need topics = [names]"),
        ('cache = "c"\ntopics = ["room-*"]', "take exact names, no globs"),
        ('cache = "c"\ntopics = ["a"]\nglob = true', "unknown key(s) ['glob']"),
    ],
)
def test_a_bad_subscription_names_its_line_and_problem(body: str, problem: str) -> None:
    with pytest.raises(RoutesError, match=re.escape(problem)):
        parse_routes(f"[[subscriptions]]\n{body}\n", Path("routes.toml"))
