"""Sorted-set calls on the local server through the official SDK (and raw gRPC for lengths and
union-store)."""

from __future__ import annotations

from momento import CacheClient
from momento.errors import MomentoErrorCode
from momento.requests import SortOrder
from momento.responses import (
    CacheSortedSetFetch,
    CacheSortedSetGetRank,
    CacheSortedSetGetScore,
    CacheSortedSetGetScores,
    CacheSortedSetIncrementScore,
    CacheSortedSetPutElements,
)
from momento_wire_types import cacheclient_pb2 as pb

from tests.integration.emulator.conftest import DATA_CACHE, RawCache
from tests.integration.emulator_support import unique

SCORES = {"a": 1.0, "b": 2.0, "c": 2.0, "d": 4.5, "e": -1.0}


def _put(sdk: CacheClient) -> str:
    name = unique("zset")
    put = sdk.sorted_set_put_elements(DATA_CACHE, name, SCORES)
    assert isinstance(put, CacheSortedSetPutElements.Success)
    return name


def _values(response: object) -> list[str]:
    assert isinstance(response, CacheSortedSetFetch.Hit), response
    return [value for value, _ in response.value_list_string]


def test_fetch_by_rank_in_both_orders(sdk: CacheClient) -> None:
    name = _put(sdk)
    assert _values(sdk.sorted_set_fetch_by_rank(DATA_CACHE, name)) == ["e", "a", "b", "c", "d"]
    assert _values(sdk.sorted_set_fetch_by_rank(DATA_CACHE, name, 1, -1)) == ["a", "b", "c"]
    descending = sdk.sorted_set_fetch_by_rank(DATA_CACHE, name, 0, 2, SortOrder.DESCENDING)
    assert _values(descending) == ["d", "c"]


def test_fetch_by_score_with_offset_and_count(sdk: CacheClient) -> None:
    name = _put(sdk)
    assert _values(sdk.sorted_set_fetch_by_score(DATA_CACHE, name, 1.0, 2.0)) == ["a", "b", "c"]
    paged = sdk.sorted_set_fetch_by_score(DATA_CACHE, name, offset=1, count=2)
    assert _values(paged) == ["a", "b"]
    high = sdk.sorted_set_fetch_by_score(
        DATA_CACHE, name, min_score=2.0, sort_order=SortOrder.DESCENDING
    )
    assert _values(high) == ["d", "c", "b"]


def test_rank_scores_and_increment(sdk: CacheClient) -> None:
    name = _put(sdk)
    rank = sdk.sorted_set_get_rank(DATA_CACHE, name, "d")
    assert isinstance(rank, CacheSortedSetGetRank.Hit)
    assert rank.rank == 4
    top = sdk.sorted_set_get_rank(DATA_CACHE, name, "d", SortOrder.DESCENDING)
    assert isinstance(top, CacheSortedSetGetRank.Hit)
    assert top.rank == 0
    assert isinstance(sdk.sorted_set_get_rank(DATA_CACHE, name, "zz"), CacheSortedSetGetRank.Miss)
    scores = sdk.sorted_set_get_scores(DATA_CACHE, name, ["a", "zz"])
    assert isinstance(scores, CacheSortedSetGetScores.Hit)
    assert isinstance(scores.responses[0], CacheSortedSetGetScore.Hit)
    assert scores.responses[0].score == 1.0
    assert isinstance(scores.responses[1], CacheSortedSetGetScore.Miss)
    bumped = sdk.sorted_set_increment_score(DATA_CACHE, name, "a", 2.5)
    assert isinstance(bumped, CacheSortedSetIncrementScore.Success)
    assert bumped.score == 3.5
    fresh = sdk.sorted_set_increment_score(DATA_CACHE, name, "new", 7.0)
    assert isinstance(fresh, CacheSortedSetIncrementScore.Success)
    assert fresh.score == 7.0


def test_remove_elements_and_lengths(sdk: CacheClient, raw: RawCache) -> None:
    name = _put(sdk)
    sdk.sorted_set_remove_elements(DATA_CACHE, name, ["b", "zz"])
    key = name.encode()
    assert raw("SortedSetLength", pb._SortedSetLengthRequest(set_name=key)).found.length == 4
    by_score = pb._SortedSetLengthByScoreRequest(set_name=key, inclusive_min=1.0, exclusive_max=4.5)
    assert raw("SortedSetLengthByScore", by_score).found.length == 2  # a, c
    sdk.sorted_set_remove_elements(DATA_CACHE, name, ["a", "c", "d", "e"])
    assert isinstance(sdk.sorted_set_fetch_by_rank(DATA_CACHE, name), CacheSortedSetFetch.Miss)


def test_union_store_weights_and_aggregates(sdk: CacheClient, raw: RawCache) -> None:
    left, right, target = unique("l"), unique("r"), unique("u")
    sdk.sorted_set_put_elements(DATA_CACHE, left, {"x": 1.0, "y": 2.0})
    sdk.sorted_set_put_elements(DATA_CACHE, right, {"y": 10.0, "z": 3.0})
    request = pb._SortedSetUnionStoreRequest(
        set_name=target.encode(),
        aggregate=pb._SortedSetUnionStoreRequest.MAX,
        ttl_milliseconds=60_000,
    )
    request.sources.add(set_name=left.encode(), weight=1.0)
    request.sources.add(set_name=right.encode(), weight=0.5)
    assert raw("SortedSetUnionStore", request).length == 3
    union = sdk.sorted_set_fetch_by_rank(DATA_CACHE, target)
    assert isinstance(union, CacheSortedSetFetch.Hit)
    assert union.value_list_string == [("x", 1.0), ("z", 1.5), ("y", 5.0)]


def test_a_sorted_set_call_on_a_dictionary_is_a_failed_precondition(sdk: CacheClient) -> None:
    name = unique("dict")
    sdk.dictionary_set_field(DATA_CACHE, name, "f", "v")
    wrong = sdk.sorted_set_get_rank(DATA_CACHE, name, "f")
    assert isinstance(wrong, CacheSortedSetGetRank.Error)
    assert wrong.error_code == MomentoErrorCode.FAILED_PRECONDITION_ERROR
