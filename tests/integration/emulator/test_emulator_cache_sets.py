"""Set calls on the local server through the official SDK (and raw gRPC for contains, length,
sample and pop)."""

from __future__ import annotations

from momento import CacheClient
from momento.errors import MomentoErrorCode
from momento.responses import (
    CacheSetAddElements,
    CacheSetFetch,
    CacheSetRemoveElements,
)
from momento_wire_types import cacheclient_pb2 as pb

from tests.integration.emulator.conftest import DATA_CACHE, RawCache
from tests.integration.emulator_support import unique


def test_add_remove_and_fetch(sdk: CacheClient) -> None:
    name = unique("set")
    added = sdk.set_add_elements(DATA_CACHE, name, {"a", "b", "c"})
    assert isinstance(added, CacheSetAddElements.Success)
    sdk.set_add_element(DATA_CACHE, name, "a")
    removed = sdk.set_remove_elements(DATA_CACHE, name, {"b", "zz"})
    assert isinstance(removed, CacheSetRemoveElements.Success)
    fetched = sdk.set_fetch(DATA_CACHE, name)
    assert isinstance(fetched, CacheSetFetch.Hit)
    assert fetched.value_set_string == {"a", "c"}
    sdk.set_remove_elements(DATA_CACHE, name, {"a", "c"})
    assert isinstance(sdk.set_fetch(DATA_CACHE, name), CacheSetFetch.Miss)


def test_contains_length_sample_and_pop(sdk: CacheClient, raw: RawCache) -> None:
    name = unique("more")
    members = {f"m{i}" for i in range(6)}
    sdk.set_add_elements(DATA_CACHE, name, members)
    key = name.encode()
    contains = raw("SetContains", pb._SetContainsRequest(set_name=key, elements=[b"m1", b"x"]))
    assert list(contains.found.contains) == [True, False]
    assert raw("SetLength", pb._SetLengthRequest(set_name=key)).found.length == 6
    sample = raw("SetSample", pb._SetSampleRequest(set_name=key, limit=4)).found.elements
    assert len(sample) == 4
    assert {e.decode() for e in sample} <= members
    popped = raw("SetPop", pb._SetPopRequest(set_name=key, count=2)).found.elements
    assert len(popped) == 2
    left = sdk.set_fetch(DATA_CACHE, name)
    assert isinstance(left, CacheSetFetch.Hit)
    assert left.value_set_string == members - {e.decode() for e in popped}
    missing = raw("SetLength", pb._SetLengthRequest(set_name=b"no-such-set"))
    assert missing.WhichOneof("set") == "missing"


def test_a_set_call_on_a_list_is_a_failed_precondition(sdk: CacheClient) -> None:
    name = unique("list")
    sdk.list_push_back(DATA_CACHE, name, "x")
    wrong = sdk.set_add_element(DATA_CACHE, name, "x")
    assert wrong.error_code == MomentoErrorCode.FAILED_PRECONDITION_ERROR  # type: ignore[attr-defined]


def test_difference_with_a_minuend_keeps_what_the_request_has_and_the_set_lacks(
    sdk: CacheClient, raw: RawCache
) -> None:
    name = unique("minuend")
    sdk.set_add_elements(DATA_CACHE, name, {"a", "b"})
    request = pb._SetDifferenceRequest(set_name=name.encode())
    request.minuend.elements.extend([b"b", b"c", b"d"])
    assert raw("SetDifference", request).WhichOneof("set") == "found"
    fetched = sdk.set_fetch(DATA_CACHE, name)
    assert isinstance(fetched, CacheSetFetch.Hit)
    assert fetched.value_set_string == {"c", "d"}
