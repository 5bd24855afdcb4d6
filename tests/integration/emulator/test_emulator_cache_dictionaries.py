"""Dictionary calls on the local server through the official SDK."""

from __future__ import annotations

import time
from datetime import timedelta

from momento import CacheClient
from momento.errors import MomentoErrorCode
from momento.requests import CollectionTtl
from momento.responses import (
    CacheDictionaryFetch,
    CacheDictionaryGetField,
    CacheDictionaryGetFields,
    CacheDictionaryIncrement,
    CacheDictionaryRemoveFields,
    CacheDictionarySetFields,
)
from momento_wire_types import cacheclient_pb2 as pb

from tests.integration.emulator.conftest import DATA_CACHE, RawCache
from tests.integration.emulator_support import unique


def test_set_get_fetch_and_remove_fields(sdk: CacheClient, raw: RawCache) -> None:
    name = unique("dict")
    stored = sdk.dictionary_set_fields(DATA_CACHE, name, {"a": "1", "b": "2", "c": "3"})
    assert isinstance(stored, CacheDictionarySetFields.Success)
    fields = sdk.dictionary_get_fields(DATA_CACHE, name, ["a", "nope", "c"])
    assert isinstance(fields, CacheDictionaryGetFields.Hit)
    assert [type(r) for r in fields.responses] == [
        CacheDictionaryGetField.Hit,
        CacheDictionaryGetField.Miss,
        CacheDictionaryGetField.Hit,
    ]
    assert fields.value_dictionary_string_string == {"a": "1", "c": "3"}
    removed = sdk.dictionary_remove_fields(DATA_CACHE, name, ["a", "b"])
    assert isinstance(removed, CacheDictionaryRemoveFields.Success)
    fetched = sdk.dictionary_fetch(DATA_CACHE, name)
    assert isinstance(fetched, CacheDictionaryFetch.Hit)
    assert fetched.value_dictionary_string_string == {"c": "3"}
    length = raw("DictionaryLength", pb._DictionaryLengthRequest(dictionary_name=name.encode()))
    assert length.found.length == 1
    sdk.dictionary_remove_field(DATA_CACHE, name, "c")
    assert isinstance(sdk.dictionary_fetch(DATA_CACHE, name), CacheDictionaryFetch.Miss)


def test_increment_a_field_and_refuse_a_non_integer(sdk: CacheClient) -> None:
    name = unique("counts")
    first = sdk.dictionary_increment(DATA_CACHE, name, "hits", 10)
    second = sdk.dictionary_increment(DATA_CACHE, name, "hits", -4)
    assert isinstance(first, CacheDictionaryIncrement.Success)
    assert isinstance(second, CacheDictionaryIncrement.Success)
    assert (first.value, second.value) == (10, 6)
    sdk.dictionary_set_field(DATA_CACHE, name, "label", "ten")
    refused = sdk.dictionary_increment(DATA_CACHE, name, "label")
    assert isinstance(refused, CacheDictionaryIncrement.Error)
    assert refused.error_code == MomentoErrorCode.FAILED_PRECONDITION_ERROR


def test_dictionary_ttl_and_type_errors(sdk: CacheClient) -> None:
    name = unique("ttl")
    sdk.dictionary_set_field(
        DATA_CACHE, name, "f", "v", ttl=CollectionTtl.of(timedelta(milliseconds=300))
    )
    assert isinstance(sdk.dictionary_fetch(DATA_CACHE, name), CacheDictionaryFetch.Hit)
    time.sleep(0.4)
    assert isinstance(sdk.dictionary_fetch(DATA_CACHE, name), CacheDictionaryFetch.Miss)
    sdk.set_add_element(DATA_CACHE, name, "x")
    wrong = sdk.dictionary_fetch(DATA_CACHE, name)
    assert isinstance(wrong, CacheDictionaryFetch.Error)
    assert wrong.error_code == MomentoErrorCode.FAILED_PRECONDITION_ERROR
