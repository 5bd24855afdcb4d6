"""Set calls: add and remove elements, fetch, contains, length, sample and pop."""

from __future__ import annotations

import random
from typing import Any, cast

from momento_wire_types import cacheclient_pb2 as pb

from pipeline.emulator.cache.calls import BadRequest, Calls, Context, require_ttl
from pipeline.emulator.state import Keyspace

ByteSet = set[bytes]


def _stored(items: Keyspace, key: bytes) -> ByteSet | None:
    item = items.collection(key, set)
    return None if item is None else cast(ByteSet, item.value)


class SetCalls(Calls):
    """Sets of bytes; an emptied set disappears."""

    def SetUnion(self, request: Any, context: Context) -> pb._SetUnionResponse:
        self._check_size(context, sum(len(e) for e in request.elements))
        with self._items(context) as items:
            require_ttl(request.ttl_milliseconds)
            item = items.write_collection(
                request.set_name, set, request.ttl_milliseconds, request.refresh_ttl
            )
            cast(ByteSet, item.value).update(request.elements)
            items.drop_if_empty(request.set_name)  # a union of nothing creates nothing
        return pb._SetUnionResponse()

    def SetDifference(self, request: Any, context: Context) -> pb._SetDifferenceResponse:
        """stored - request (a subtrahend: elements, or the set itself, which deletes it), or
        request - stored (a minuend), as the proto defines them."""
        with self._items(context) as items:
            how = request.WhichOneof("difference")
            if how is None:
                raise BadRequest("SetDifference needs a minuend or a subtrahend")
            stored = _stored(items, request.set_name)
            if stored is None:
                return pb._SetDifferenceResponse(missing=pb._SetDifferenceResponse._Missing())
            if how == "minuend":
                remaining = set(request.minuend.elements) - stored
                stored.clear()
                stored.update(remaining)
            elif request.subtrahend.WhichOneof("subtrahend_set") == "identity":
                stored.clear()
            else:
                stored.difference_update(request.subtrahend.set.elements)
            items.drop_if_empty(request.set_name)
        return pb._SetDifferenceResponse(found=pb._SetDifferenceResponse._Found())

    def SetFetch(self, request: Any, context: Context) -> pb._SetFetchResponse:
        with self._items(context) as items:
            stored = _stored(items, request.set_name)
            if stored is None:
                return pb._SetFetchResponse(missing=pb._SetFetchResponse._Missing())
            elements = list(stored)
        return pb._SetFetchResponse(found=pb._SetFetchResponse._Found(elements=elements))

    def SetContains(self, request: Any, context: Context) -> pb._SetContainsResponse:
        with self._items(context) as items:
            stored = _stored(items, request.set_name)
            if stored is None:
                return pb._SetContainsResponse(missing=pb._SetContainsResponse._Missing())
            contains = [element in stored for element in request.elements]
        return pb._SetContainsResponse(found=pb._SetContainsResponse._Found(contains=contains))

    def SetLength(self, request: Any, context: Context) -> pb._SetLengthResponse:
        with self._items(context) as items:
            stored = _stored(items, request.set_name)
            if stored is None:
                return pb._SetLengthResponse(missing=pb._SetLengthResponse._Missing())
            length = len(stored)
        return pb._SetLengthResponse(found=pb._SetLengthResponse._Found(length=length))

    def SetSample(self, request: Any, context: Context) -> pb._SetSampleResponse:
        with self._items(context) as items:
            stored = _stored(items, request.set_name)
            if stored is None:
                return pb._SetSampleResponse(missing=pb._SetSampleResponse._Missing())
            chosen = random.sample(sorted(stored), min(request.limit, len(stored)))
        return pb._SetSampleResponse(found=pb._SetSampleResponse._Found(elements=chosen))

    def SetPop(self, request: Any, context: Context) -> pb._SetPopResponse:
        with self._items(context) as items:
            stored = _stored(items, request.set_name)
            if stored is None:
                return pb._SetPopResponse(missing=pb._SetPopResponse._Missing())
            chosen = random.sample(sorted(stored), min(request.count, len(stored)))
            stored.difference_update(chosen)
            items.drop_if_empty(request.set_name)
        return pb._SetPopResponse(found=pb._SetPopResponse._Found(elements=chosen))
