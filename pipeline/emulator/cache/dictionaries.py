"""Dictionary calls: fetch, get fields, set fields, increment a field, remove fields, length."""

from __future__ import annotations

from typing import Any, cast

from momento_wire_types import cacheclient_pb2 as pb

from pipeline.emulator.cache.calls import (
    Calls,
    Context,
    add_int64,
    parse_integer,
    require_ttl,
)
from pipeline.emulator.state import Keyspace

Dictionary = dict[bytes, bytes]


def _stored(items: Keyspace, key: bytes) -> Dictionary | None:
    item = items.collection(key, dict)
    return None if item is None else cast(Dictionary, item.value)


class DictionaryCalls(Calls):
    """Dictionaries of bytes to bytes; an emptied dictionary disappears."""

    def DictionarySet(self, request: Any, context: Context) -> pb._DictionarySetResponse:
        self._check_size(context, sum(len(i.field) + len(i.value) for i in request.items))
        with self._items(context) as items:
            require_ttl(request.ttl_milliseconds)
            item = items.write_collection(
                request.dictionary_name, dict, request.ttl_milliseconds, request.refresh_ttl
            )
            stored = cast(Dictionary, item.value)
            for pair in request.items:
                stored[pair.field] = pair.value
        return pb._DictionarySetResponse()

    def DictionaryIncrement(
        self, request: Any, context: Context
    ) -> pb._DictionaryIncrementResponse:
        with self._items(context) as items:
            require_ttl(request.ttl_milliseconds)
            existing = _stored(items, request.dictionary_name)
            current = None if existing is None else existing.get(request.field)
            start = 0 if current is None else parse_integer(current, "the field")
            total = add_int64(start, request.amount, "the field")
            item = items.write_collection(
                request.dictionary_name, dict, request.ttl_milliseconds, request.refresh_ttl
            )
            cast(Dictionary, item.value)[request.field] = str(total).encode()
        return pb._DictionaryIncrementResponse(value=total)

    def DictionaryGet(self, request: Any, context: Context) -> pb._DictionaryGetResponse:
        with self._items(context) as items:
            stored = _stored(items, request.dictionary_name)
            if stored is None:
                return pb._DictionaryGetResponse(missing=pb._DictionaryGetResponse._Missing())
            values = [stored.get(field) for field in request.fields]
        part = pb._DictionaryGetResponse._DictionaryGetResponsePart
        parts = [
            part(result=pb.Miss) if value is None else part(result=pb.Hit, cache_body=value)
            for value in values
        ]
        return pb._DictionaryGetResponse(found=pb._DictionaryGetResponse._Found(items=parts))

    def DictionaryFetch(self, request: Any, context: Context) -> pb._DictionaryFetchResponse:
        with self._items(context) as items:
            stored = _stored(items, request.dictionary_name)
            if stored is None:
                return pb._DictionaryFetchResponse(missing=pb._DictionaryFetchResponse._Missing())
            pairs = [pb._DictionaryFieldValuePair(field=f, value=v) for f, v in stored.items()]
        return pb._DictionaryFetchResponse(found=pb._DictionaryFetchResponse._Found(items=pairs))

    def DictionaryDelete(self, request: Any, context: Context) -> pb._DictionaryDeleteResponse:
        with self._items(context) as items:
            stored = _stored(items, request.dictionary_name)
            if stored is not None:
                if request.WhichOneof("delete") == "all":
                    items.delete(request.dictionary_name)
                else:
                    for field in request.some.fields:
                        stored.pop(field, None)
                    items.drop_if_empty(request.dictionary_name)
        return pb._DictionaryDeleteResponse()

    def DictionaryLength(self, request: Any, context: Context) -> pb._DictionaryLengthResponse:
        with self._items(context) as items:
            stored = _stored(items, request.dictionary_name)
            if stored is None:
                return pb._DictionaryLengthResponse(missing=pb._DictionaryLengthResponse._Missing())
            length = len(stored)
        found_part = pb._DictionaryLengthResponse._Found(length=length)
        return pb._DictionaryLengthResponse(found=found_part)
