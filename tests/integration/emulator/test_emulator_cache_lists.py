"""List calls on the local server through the official SDK (and raw gRPC for retain/erase)."""

from __future__ import annotations

import time
from datetime import timedelta

from momento import CacheClient
from momento.errors import MomentoErrorCode
from momento.requests import CollectionTtl
from momento.responses import (
    CacheListConcatenateBack,
    CacheListConcatenateFront,
    CacheListFetch,
    CacheListLength,
    CacheListPopBack,
    CacheListPopFront,
    CacheListPushBack,
    CacheListPushFront,
    CacheListRemoveValue,
)
from momento_wire_types import cacheclient_pb2 as pb

from tests.integration.emulator.conftest import DATA_CACHE, RawCache
from tests.integration.emulator_support import unique


def _fetch(sdk: CacheClient, name: str) -> list[str] | None:
    fetched = sdk.list_fetch(DATA_CACHE, name)
    if isinstance(fetched, CacheListFetch.Miss):
        return None
    assert isinstance(fetched, CacheListFetch.Hit), fetched
    return list(fetched.value_list_string)


def test_push_and_concatenate_at_both_ends_with_truncation(sdk: CacheClient) -> None:
    name = unique("list")
    back = sdk.list_concatenate_back(DATA_CACHE, name, ["a", "b", "c"])
    assert isinstance(back, CacheListConcatenateBack.Success)
    assert back.list_length == 3
    front = sdk.list_concatenate_front(DATA_CACHE, name, ["y", "z"], truncate_back_to_size=4)
    assert isinstance(front, CacheListConcatenateFront.Success)
    assert front.list_length == 4
    assert _fetch(sdk, name) == ["y", "z", "a", "b"]
    pushed = sdk.list_push_back(DATA_CACHE, name, "e", truncate_front_to_size=3)
    assert isinstance(pushed, CacheListPushBack.Success)
    assert _fetch(sdk, name) == ["a", "b", "e"]
    pushed_front = sdk.list_push_front(DATA_CACHE, name, "0")
    assert isinstance(pushed_front, CacheListPushFront.Success)
    assert pushed_front.list_length == 4
    length = sdk.list_length(DATA_CACHE, name)
    assert isinstance(length, CacheListLength.Hit)
    assert length.length == 4


def test_pop_and_remove_empty_the_list_into_a_miss(sdk: CacheClient) -> None:
    name = unique("pop")
    sdk.list_concatenate_back(DATA_CACHE, name, ["a", "x", "b", "x"])
    removed = sdk.list_remove_value(DATA_CACHE, name, "x")
    assert isinstance(removed, CacheListRemoveValue.Success)
    assert _fetch(sdk, name) == ["a", "b"]
    front = sdk.list_pop_front(DATA_CACHE, name)
    assert isinstance(front, CacheListPopFront.Hit)
    assert front.value_string == "a"
    back = sdk.list_pop_back(DATA_CACHE, name)
    assert isinstance(back, CacheListPopBack.Hit)
    assert back.value_string == "b"
    assert _fetch(sdk, name) is None
    assert isinstance(sdk.list_pop_back(DATA_CACHE, name), CacheListPopBack.Miss)
    assert isinstance(sdk.list_length(DATA_CACHE, name), CacheListLength.Miss)


def test_collection_ttl_is_refreshed_only_when_asked(sdk: CacheClient) -> None:
    kept, refreshed = unique("kept"), unique("refreshed")
    short = CollectionTtl.of(timedelta(milliseconds=500))
    for name in (kept, refreshed):
        sdk.list_push_back(DATA_CACHE, name, "first", ttl=short)
    long_ttl = timedelta(seconds=30)
    sdk.list_push_back(DATA_CACHE, kept, "second", ttl=CollectionTtl(long_ttl, refresh_ttl=False))
    sdk.list_push_back(DATA_CACHE, refreshed, "second", ttl=CollectionTtl.of(long_ttl))
    time.sleep(0.7)
    assert _fetch(sdk, kept) is None
    assert _fetch(sdk, refreshed) == ["first", "second"]


def test_a_list_call_on_a_scalar_is_a_failed_precondition(sdk: CacheClient) -> None:
    name = unique("scalar")
    sdk.set(DATA_CACHE, name, "v")
    pushed = sdk.list_push_back(DATA_CACHE, name, "x")
    assert isinstance(pushed, CacheListPushBack.Error)
    assert pushed.error_code == MomentoErrorCode.FAILED_PRECONDITION_ERROR


def test_fetch_range_retain_and_erase(raw: RawCache, sdk: CacheClient) -> None:
    name = unique("ranges")
    sdk.list_concatenate_back(DATA_CACHE, name, [str(i) for i in range(8)])
    key = name.encode()
    window = raw(
        "ListFetch", pb._ListFetchRequest(list_name=key, inclusive_start=2, exclusive_end=-2)
    )
    assert list(window.found.values) == [b"2", b"3", b"4", b"5"]
    backwards = pb._ListFetchRequest(list_name=key, inclusive_start=-2, exclusive_end=-6)
    assert list(raw("ListFetch", backwards).found.values) == []  # as the proto's examples say
    retain = pb._ListRetainRequest(list_name=key, inclusive_start=1, exclusive_end=7)
    assert raw("ListRetain", retain).found.list_length == 6
    assert _fetch(sdk, name) == ["1", "2", "3", "4", "5", "6"]
    erase = pb._ListEraseRequest(list_name=key)
    erase.some.ranges.add(begin_index=0, count=2)
    erase.some.ranges.add(begin_index=4, count=1)
    assert raw("ListErase", erase).found.list_length == 3
    assert _fetch(sdk, name) == ["3", "4", "6"]
