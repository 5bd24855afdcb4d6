"""Scalar cache calls on the local server: increment, conditional sets, batches, TTL calls and
the errors Momento gives (unknown cache, wrong type, non-integer increments)."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import grpc
import pytest
from momento import CacheClient
from momento.errors import MomentoErrorCode
from momento.responses import (
    CacheGet,
    CacheIncrement,
    CacheListPushBack,
    CacheSetIfNotExists,
)
from momento_wire_types import cacheclient_pb2 as pb
from momento_wire_types import cacheclient_pb2_grpc as cache_grpc
from momento_wire_types import common_pb2
from momento_wire_types import controlclient_pb2 as control_pb
from momento_wire_types import controlclient_pb2_grpc as control_grpc

from pipeline.emulator import EmulatorServer
from pipeline.emulator.cache import CacheServicer
from tests.integration.emulator.conftest import DATA_CACHE, RawCache
from tests.integration.emulator_support import unique


def test_increment_counts_from_zero_and_refuses_non_integers(sdk: CacheClient) -> None:
    key = unique("counter")
    first = sdk.increment(DATA_CACHE, key, 5)
    second = sdk.increment(DATA_CACHE, key, -2)
    assert isinstance(first, CacheIncrement.Success)
    assert isinstance(second, CacheIncrement.Success)
    assert (first.value, second.value) == (5, 3)
    got = sdk.get(DATA_CACHE, key)
    assert isinstance(got, CacheGet.Hit)
    assert got.value_string == "3"
    sdk.set(DATA_CACHE, key, "three")
    refused = sdk.increment(DATA_CACHE, key)
    assert isinstance(refused, CacheIncrement.Error)
    assert refused.error_code == MomentoErrorCode.FAILED_PRECONDITION_ERROR


def test_increment_past_int64_is_refused(sdk: CacheClient) -> None:
    key = unique("big")
    sdk.set(DATA_CACHE, key, str(2**63 - 1))
    overflow = sdk.increment(DATA_CACHE, key, 1)
    assert isinstance(overflow, CacheIncrement.Error)
    assert overflow.error_code == MomentoErrorCode.FAILED_PRECONDITION_ERROR


def test_set_if_not_exists_stores_once(sdk: CacheClient) -> None:
    key = unique("once")
    first = sdk.set_if_not_exists(DATA_CACHE, key, "a")
    second = sdk.set_if_not_exists(DATA_CACHE, key, "b")
    assert isinstance(first, CacheSetIfNotExists.Stored)
    assert isinstance(second, CacheSetIfNotExists.NotStored)
    got = sdk.get(DATA_CACHE, key)
    assert isinstance(got, CacheGet.Hit)
    assert got.value_string == "a"


def test_a_scalar_call_on_a_collection_is_a_failed_precondition(sdk: CacheClient) -> None:
    key = unique("typed")
    assert isinstance(sdk.list_push_back(DATA_CACHE, key, "x"), CacheListPushBack.Success)
    got = sdk.get(DATA_CACHE, key)
    assert isinstance(got, CacheGet.Error)
    assert got.error_code == MomentoErrorCode.FAILED_PRECONDITION_ERROR
    assert "list" in got.message
    sdk.set(DATA_CACHE, key, "now scalar")  # a set replaces whatever the key held
    replaced = sdk.get(DATA_CACHE, key)
    assert isinstance(replaced, CacheGet.Hit)
    assert replaced.value_string == "now scalar"


def test_every_family_answers_not_found_for_an_unknown_cache(sdk: CacheClient) -> None:
    calls = [
        sdk.increment("no-such-cache", "k"),
        sdk.set_if_not_exists("no-such-cache", "k", "v"),
        sdk.list_fetch("no-such-cache", "l"),
        sdk.dictionary_fetch("no-such-cache", "d"),
        sdk.set_fetch("no-such-cache", "s"),
        sdk.sorted_set_fetch_by_rank("no-such-cache", "z"),
    ]
    for response in calls:
        assert response.error_code == MomentoErrorCode.NOT_FOUND_ERROR, response  # type: ignore[attr-defined]


def _set_if(raw: RawCache, key: bytes, value: bytes, **condition: object) -> str:
    request = pb._SetIfRequest(cache_key=key, cache_body=value, ttl_milliseconds=60_000)
    for name, message in condition.items():
        getattr(request, name).CopyFrom(message)
    return str(raw("SetIf", request).WhichOneof("result"))


def test_set_if_conditions(raw: RawCache, sdk: CacheClient) -> None:
    key = unique("cond").encode()
    assert _set_if(raw, key, b"v1", present=common_pb2.Present()) == "not_stored"
    assert _set_if(raw, key, b"v1", absent=common_pb2.Absent()) == "stored"
    assert _set_if(raw, key, b"v2", absent=common_pb2.Absent()) == "not_stored"
    equal = common_pb2.Equal(value_to_check=b"other")
    assert _set_if(raw, key, b"v2", equal=equal) == "not_stored"
    assert _set_if(raw, key, b"v2", equal=common_pb2.Equal(value_to_check=b"v1")) == "stored"
    not_equal = common_pb2.PresentAndNotEqual(value_to_check=b"v2")
    assert _set_if(raw, key, b"v3", present_and_not_equal=not_equal) == "not_stored"
    got = sdk.get(DATA_CACHE, key)
    assert isinstance(got, CacheGet.Hit)
    assert got.value_bytes == b"v2"


def test_batches_and_keys_exist(raw: RawCache) -> None:
    keys = [unique("batch").encode() for _ in range(3)]
    sets = [pb._SetRequest(cache_key=k, cache_body=k[::-1], ttl_milliseconds=60_000) for k in keys]
    set_results = list(raw("SetBatch", pb._SetBatchRequest(items=sets[:2])))
    assert [r.result for r in set_results] == [pb.Ok, pb.Ok]
    gets = [pb._GetRequest(cache_key=k) for k in keys]
    got = list(raw("GetBatch", pb._GetBatchRequest(items=gets)))
    assert [(g.result, g.cache_body) for g in got] == [
        (pb.Hit, keys[0][::-1]),
        (pb.Hit, keys[1][::-1]),
        (pb.Miss, b""),
    ]
    exists = raw("KeysExist", pb._KeysExistRequest(cache_keys=keys))
    assert list(exists.exists) == [True, True, False]


def test_item_ttl_calls_follow_increase_decrease_and_overwrite(raw: RawCache) -> None:
    key = unique("ttl").encode()
    raw("Set", pb._SetRequest(cache_key=key, cache_body=b"v", ttl_milliseconds=60_000))

    def remaining_ms() -> int:
        found = raw("ItemGetTtl", pb._ItemGetTtlRequest(cache_key=key))
        assert found.WhichOneof("result") == "found"
        return int(found.found.remaining_ttl_millis)

    def update(**how: int) -> str:
        request = pb._UpdateTtlRequest(cache_key=key, **how)
        return str(raw("UpdateTtl", request).WhichOneof("result"))

    assert 59_000 < remaining_ms() <= 60_000
    assert update(increase_to_milliseconds=30_000) == "not_set"
    assert update(increase_to_milliseconds=120_000) == "set"
    assert 119_000 < remaining_ms() <= 120_000
    assert update(decrease_to_milliseconds=200_000) == "not_set"
    assert update(decrease_to_milliseconds=10_000) == "set"
    assert update(overwrite_to_milliseconds=300) == "set"
    assert remaining_ms() <= 300
    time.sleep(0.4)
    missing = raw("ItemGetTtl", pb._ItemGetTtlRequest(cache_key=key))
    assert missing.WhichOneof("result") == "missing"
    assert update(overwrite_to_milliseconds=1_000) == "missing"


def test_item_get_type_names_each_kind(raw: RawCache, sdk: CacheClient) -> None:
    names = {kind: unique(kind) for kind in ("scalar", "list", "set", "dict", "zset")}
    sdk.set(DATA_CACHE, names["scalar"], "v")
    sdk.list_push_back(DATA_CACHE, names["list"], "v")
    sdk.set_add_element(DATA_CACHE, names["set"], "v")
    sdk.dictionary_set_field(DATA_CACHE, names["dict"], "f", "v")
    sdk.sorted_set_put_element(DATA_CACHE, names["zset"], "v", 1.0)
    kinds = {}
    for kind, name in names.items():
        answer = raw("ItemGetType", pb._ItemGetTypeRequest(cache_key=name.encode()))
        kinds[kind] = answer.found.item_type
    response = pb._ItemGetTypeResponse
    assert kinds == {
        "scalar": response.SCALAR,
        "list": response.LIST,
        "set": response.SET,
        "dict": response.DICTIONARY,
        "zset": response.SORTED_SET,
    }


def test_zero_ttl_is_an_invalid_argument(raw: RawCache) -> None:
    request = pb._IncrementRequest(cache_key=b"k", amount=1, ttl_milliseconds=0)
    with pytest.raises(grpc.RpcError) as caught:
        raw("Increment", request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_get_with_hash_and_set_if_hash(raw: RawCache, sdk: CacheClient) -> None:
    key = unique("hash").encode()
    missing = raw("GetWithHash", pb._GetWithHashRequest(cache_key=key))
    assert missing.WhichOneof("result") == "missing"

    def set_if_hash(value: bytes, **condition: object) -> pb._SetIfHashResponse:
        request = pb._SetIfHashRequest(cache_key=key, cache_body=value, ttl_milliseconds=60_000)
        for name, message in condition.items():
            getattr(request, name).CopyFrom(message)
        return raw("SetIfHash", request)

    first = set_if_hash(b"v1", absent_or_hash_equal=common_pb2.AbsentOrHashEqual())
    assert first.WhichOneof("result") == "stored"
    found = raw("GetWithHash", pb._GetWithHashRequest(cache_key=key)).found
    assert (found.value, found.hash) == (b"v1", first.stored.new_hash)
    stale = common_pb2.PresentAndHashEqual(hash_to_check=b"not-the-hash")
    assert set_if_hash(b"v2", present_and_hash_equal=stale).WhichOneof("result") == "not_stored"
    fresh = common_pb2.PresentAndHashEqual(hash_to_check=found.hash)
    assert set_if_hash(b"v2", present_and_hash_equal=fresh).WhichOneof("result") == "stored"
    got = sdk.get(DATA_CACHE, key)
    assert isinstance(got, CacheGet.Hit)
    assert got.value_bytes == b"v2"


def test_every_cache_call_is_served() -> None:
    generated = {name for name in vars(cache_grpc.ScsServicer) if not name.startswith("_")}
    missing = {name for name in generated if name not in vars_of_mro(CacheServicer)}
    assert generated
    assert missing == set()


def vars_of_mro(cls: type) -> set[str]:
    """Names defined by ``cls`` and its bases other than the generated servicer."""
    return {
        name for base in cls.__mro__ if base is not cache_grpc.ScsServicer for name in vars(base)
    }


def test_an_unserved_call_is_unimplemented_with_one_log_line(
    data_emu: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{data_emu.port}") as channel:
        control = control_grpc.ScsControlStub(channel)
        with caplog.at_level(logging.WARNING), pytest.raises(grpc.RpcError) as caught:
            control.ListIndexes(control_pb._ListIndexesRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    lines = [r for r in caplog.records if "ListIndexes" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].exc_info is None


def test_set_ttl_expires_the_item(sdk: CacheClient) -> None:
    key = unique("short")
    sdk.set(DATA_CACHE, key, "v", ttl=timedelta(milliseconds=300))
    assert isinstance(sdk.get(DATA_CACHE, key), CacheGet.Hit)
    time.sleep(0.4)
    assert isinstance(sdk.get(DATA_CACHE, key), CacheGet.Miss)
