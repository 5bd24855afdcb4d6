"""List calls: fetch, length, push and concatenate at either end (with truncation), pop,
remove a value, retain a range and erase ranges."""

from __future__ import annotations

from typing import Any, cast

from momento_wire_types import cacheclient_pb2 as pb

from pipeline.emulator.cache.calls import Calls, Context, require_ttl
from pipeline.emulator.state import Keyspace


def _bounds(request: Any) -> slice:
    """The request's [start, end) as a slice: negative indexes count from the end, and a start
    past the end selects nothing (the proto's own examples are Python slices)."""
    start = (
        request.inclusive_start if request.WhichOneof("start_index") == "inclusive_start" else None
    )
    end = request.exclusive_end if request.WhichOneof("end_index") == "exclusive_end" else None
    return slice(start, end)


def _stored(items: Keyspace, key: bytes) -> list[bytes] | None:
    item = items.collection(key, list)
    return None if item is None else cast(list[bytes], item.value)


class ListCalls(Calls):
    """Lists of bytes; an emptied list disappears, as on Momento."""

    def _add(
        self, request: Any, context: Context, values: list[bytes], front: bool, truncate_to: int
    ) -> int:
        self._check_size(context, sum(len(v) for v in values))
        with self._items(context) as items:
            require_ttl(request.ttl_milliseconds)
            item = items.write_collection(
                request.list_name, list, request.ttl_milliseconds, request.refresh_ttl
            )
            stored = cast(list[bytes], item.value)
            if front:
                stored[:0] = values
                if truncate_to and len(stored) > truncate_to:
                    del stored[truncate_to:]  # truncate the back
            else:
                stored.extend(values)
                if truncate_to and len(stored) > truncate_to:
                    del stored[: len(stored) - truncate_to]  # truncate the front
            return len(stored)

    def ListPushFront(self, request: Any, context: Context) -> pb._ListPushFrontResponse:
        length = self._add(request, context, [request.value], True, request.truncate_back_to_size)
        return pb._ListPushFrontResponse(list_length=length)

    def ListPushBack(self, request: Any, context: Context) -> pb._ListPushBackResponse:
        length = self._add(request, context, [request.value], False, request.truncate_front_to_size)
        return pb._ListPushBackResponse(list_length=length)

    def ListConcatenateFront(
        self, request: Any, context: Context
    ) -> pb._ListConcatenateFrontResponse:
        values = list(request.values)
        length = self._add(request, context, values, True, request.truncate_back_to_size)
        return pb._ListConcatenateFrontResponse(list_length=length)

    def ListConcatenateBack(
        self, request: Any, context: Context
    ) -> pb._ListConcatenateBackResponse:
        values = list(request.values)
        length = self._add(request, context, values, False, request.truncate_front_to_size)
        return pb._ListConcatenateBackResponse(list_length=length)

    def ListFetch(self, request: Any, context: Context) -> pb._ListFetchResponse:
        with self._items(context) as items:
            bounds = _bounds(request)
            stored = _stored(items, request.list_name)
            if stored is None:
                return pb._ListFetchResponse(missing=pb._ListFetchResponse._Missing())
            values = stored[bounds]
        return pb._ListFetchResponse(found=pb._ListFetchResponse._Found(values=values))

    def ListLength(self, request: Any, context: Context) -> pb._ListLengthResponse:
        with self._items(context) as items:
            stored = _stored(items, request.list_name)
            if stored is None:
                return pb._ListLengthResponse(missing=pb._ListLengthResponse._Missing())
            length = len(stored)
        return pb._ListLengthResponse(found=pb._ListLengthResponse._Found(length=length))

    def _pop(self, request: Any, context: Context, front: bool) -> tuple[bytes, int] | None:
        with self._items(context) as items:
            stored = _stored(items, request.list_name)
            if stored is None:
                return None
            value = stored.pop(0 if front else -1)
            items.drop_if_empty(request.list_name)
            return value, len(stored)

    def ListPopFront(self, request: Any, context: Context) -> pb._ListPopFrontResponse:
        popped = self._pop(request, context, front=True)
        if popped is None:
            return pb._ListPopFrontResponse(missing=pb._ListPopFrontResponse._Missing())
        found = pb._ListPopFrontResponse._Found(front=popped[0], list_length=popped[1])
        return pb._ListPopFrontResponse(found=found)

    def ListPopBack(self, request: Any, context: Context) -> pb._ListPopBackResponse:
        popped = self._pop(request, context, front=False)
        if popped is None:
            return pb._ListPopBackResponse(missing=pb._ListPopBackResponse._Missing())
        found = pb._ListPopBackResponse._Found(back=popped[0], list_length=popped[1])
        return pb._ListPopBackResponse(found=found)

    def ListRemove(self, request: Any, context: Context) -> pb._ListRemoveResponse:
        with self._items(context) as items:
            stored = _stored(items, request.list_name)
            if stored is None:
                return pb._ListRemoveResponse(missing=pb._ListRemoveResponse._Missing())
            stored[:] = [v for v in stored if v != request.all_elements_with_value]
            length = len(stored)
            items.drop_if_empty(request.list_name)
        return pb._ListRemoveResponse(found=pb._ListRemoveResponse._Found(list_length=length))

    def ListRetain(self, request: Any, context: Context) -> pb._ListRetainResponse:
        with self._items(context) as items:
            bounds = _bounds(request)
            stored = _stored(items, request.list_name)
            if stored is None:
                return pb._ListRetainResponse(missing=pb._ListRetainResponse._Missing())
            stored[:] = stored[bounds]
            length = len(stored)
            if request.refresh_ttl and request.ttl_milliseconds:
                items.refresh(request.list_name, request.ttl_milliseconds)
            items.drop_if_empty(request.list_name)
        return pb._ListRetainResponse(found=pb._ListRetainResponse._Found(list_length=length))

    def ListErase(self, request: Any, context: Context) -> pb._ListEraseResponse:
        with self._items(context) as items:
            stored = _stored(items, request.list_name)
            if stored is None:
                return pb._ListEraseResponse(missing=pb._ListEraseResponse._Missing())
            if request.WhichOneof("erase") == "all":
                stored.clear()
            else:
                gone: set[int] = set()
                for part in request.some.ranges:
                    gone.update(range(part.begin_index, part.begin_index + part.count))
                stored[:] = [v for i, v in enumerate(stored) if i not in gone]
            length = len(stored)
            items.drop_if_empty(request.list_name)
        return pb._ListEraseResponse(found=pb._ListEraseResponse._Found(list_length=length))
