"""Scalar calls: get/set/delete, conditional sets, increment, batches, key and TTL queries."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from momento_wire_types import cacheclient_pb2 as pb

from pipeline.emulator.cache.calls import (
    BadRequest,
    Calls,
    Context,
    add_int64,
    parse_integer,
    require_ttl,
)
from pipeline.emulator.state import Item, Keyspace, kind_of

ITEM_TYPES = {
    "scalar": pb._ItemGetTypeResponse.SCALAR,
    "list": pb._ItemGetTypeResponse.LIST,
    "dictionary": pb._ItemGetTypeResponse.DICTIONARY,
    "set": pb._ItemGetTypeResponse.SET,
    "sorted set": pb._ItemGetTypeResponse.SORTED_SET,
}


def _condition_holds(request: Any, items: Keyspace) -> bool:
    """Whether a SetIf's condition holds for the current item (a collection is 'present' and
    equal to no value)."""
    condition = request.WhichOneof("condition")
    if condition is None:
        raise BadRequest("SetIf needs a condition")
    item = items.find(request.cache_key)
    current = item.value if item is not None and isinstance(item.value, bytes) else None
    if condition == "present":
        return item is not None
    if condition == "absent":
        return item is None
    expected: bytes = getattr(request, condition).value_to_check
    if condition == "equal":
        return current == expected
    if condition == "not_equal":
        return current != expected
    if condition == "present_and_not_equal":
        return item is not None and current != expected
    if condition == "absent_or_equal":
        return item is None or current == expected
    raise BadRequest(f"SetIf condition {condition} is not known")


def value_hash(value: bytes) -> bytes:
    """The hash GetWithHash returns and SetIfHash compares (opaque to clients; Momento does not
    say which function it uses, so SHA-256 here)."""
    return hashlib.sha256(value).digest()


def _hash_condition_holds(request: Any, items: Keyspace) -> bool:
    """Whether a SetIfHash's condition holds (a collection is 'present' with no hash)."""
    condition = request.WhichOneof("condition")
    if condition == "unconditional":
        return True
    item = items.find(request.cache_key)
    current = value_hash(item.value) if item is not None and isinstance(item.value, bytes) else None
    if condition is None:
        raise BadRequest("SetIfHash needs a condition")
    expected: bytes = getattr(request, condition).hash_to_check
    if condition == "present_and_hash_equal":
        return current == expected
    if condition == "present_and_not_hash_equal":
        return item is not None and current != expected
    if condition == "absent_or_hash_equal":
        return item is None or current == expected
    return item is None or current != expected  # absent_or_not_hash_equal


def _remaining_ms(item: Item, items: Keyspace) -> int:
    return max(0, round((item.expires_at - items.now) * 1000))


class ScalarCalls(Calls):
    """Scalar values and the calls that work on any key (TTL, type, existence)."""

    def Get(self, request: Any, context: Context) -> pb._GetResponse:
        with self._items(context) as items:
            value = items.scalar(request.cache_key)
        return _get_response(value)

    def Set(self, request: Any, context: Context) -> pb._SetResponse:
        self._check_size(context, len(request.cache_key) + len(request.cache_body))
        with self._items(context) as items:
            require_ttl(request.ttl_milliseconds)
            items.put(request.cache_key, request.cache_body, request.ttl_milliseconds)
        return pb._SetResponse(result=pb.Ok)

    def Delete(self, request: Any, context: Context) -> pb._DeleteResponse:
        with self._items(context) as items:
            items.delete(request.cache_key)
        return pb._DeleteResponse()

    def SetIfNotExists(self, request: Any, context: Context) -> pb._SetIfNotExistsResponse:
        self._check_size(context, len(request.cache_key) + len(request.cache_body))
        with self._items(context) as items:
            require_ttl(request.ttl_milliseconds)
            if items.find(request.cache_key) is not None:
                return pb._SetIfNotExistsResponse(
                    not_stored=pb._SetIfNotExistsResponse._NotStored()
                )
            items.put(request.cache_key, request.cache_body, request.ttl_milliseconds)
        return pb._SetIfNotExistsResponse(stored=pb._SetIfNotExistsResponse._Stored())

    def SetIf(self, request: Any, context: Context) -> pb._SetIfResponse:
        self._check_size(context, len(request.cache_key) + len(request.cache_body))
        with self._items(context) as items:
            require_ttl(request.ttl_milliseconds)
            if not _condition_holds(request, items):
                return pb._SetIfResponse(not_stored=pb._SetIfResponse._NotStored())
            items.put(request.cache_key, request.cache_body, request.ttl_milliseconds)
        return pb._SetIfResponse(stored=pb._SetIfResponse._Stored())

    def GetWithHash(self, request: Any, context: Context) -> pb._GetWithHashResponse:
        with self._items(context) as items:
            value = items.scalar(request.cache_key)
        if value is None:
            return pb._GetWithHashResponse(missing=pb._GetWithHashResponse._Missing())
        found = pb._GetWithHashResponse._Found(value=value, hash=value_hash(value))
        return pb._GetWithHashResponse(found=found)

    def SetIfHash(self, request: Any, context: Context) -> pb._SetIfHashResponse:
        self._check_size(context, len(request.cache_key) + len(request.cache_body))
        with self._items(context) as items:
            require_ttl(request.ttl_milliseconds)
            if not _hash_condition_holds(request, items):
                return pb._SetIfHashResponse(not_stored=pb._SetIfHashResponse._NotStored())
            items.put(request.cache_key, request.cache_body, request.ttl_milliseconds)
        stored = pb._SetIfHashResponse._Stored(new_hash=value_hash(request.cache_body))
        return pb._SetIfHashResponse(stored=stored)

    def Increment(self, request: Any, context: Context) -> pb._IncrementResponse:
        with self._items(context) as items:
            require_ttl(request.ttl_milliseconds)
            current = items.scalar(request.cache_key)
            start = 0 if current is None else parse_integer(current, "the value")
            total = add_int64(start, request.amount, "the value")
            item = items.find(request.cache_key)
            if item is None:
                items.put(request.cache_key, str(total).encode(), request.ttl_milliseconds)
            else:
                item.value = str(total).encode()  # an existing item keeps its TTL
        return pb._IncrementResponse(value=total)

    def GetBatch(self, request: Any, context: Context) -> Iterator[pb._GetResponse]:
        with self._items(context) as items:
            values = [items.scalar(get.cache_key) for get in request.items]
        return iter([_get_response(value) for value in values])

    def SetBatch(self, request: Any, context: Context) -> Iterator[pb._SetResponse]:
        for item in request.items:
            self._check_size(context, len(item.cache_key) + len(item.cache_body))
        with self._items(context) as items:
            for item in request.items:
                require_ttl(item.ttl_milliseconds)
            for item in request.items:
                items.put(item.cache_key, item.cache_body, item.ttl_milliseconds)
        return iter([pb._SetResponse(result=pb.Ok) for _ in request.items])

    def KeysExist(self, request: Any, context: Context) -> pb._KeysExistResponse:
        with self._items(context) as items:
            exists = [items.find(key) is not None for key in request.cache_keys]
        return pb._KeysExistResponse(exists=exists)

    def ItemGetTtl(self, request: Any, context: Context) -> pb._ItemGetTtlResponse:
        with self._items(context) as items:
            item = items.find(request.cache_key)
            if item is None:
                return pb._ItemGetTtlResponse(missing=pb._ItemGetTtlResponse._Missing())
            remaining = _remaining_ms(item, items)
        found = pb._ItemGetTtlResponse._Found(remaining_ttl_millis=remaining)
        return pb._ItemGetTtlResponse(found=found)

    def ItemGetType(self, request: Any, context: Context) -> pb._ItemGetTypeResponse:
        with self._items(context) as items:
            item = items.find(request.cache_key)
            if item is None:
                return pb._ItemGetTypeResponse(missing=pb._ItemGetTypeResponse._Missing())
            kind = ITEM_TYPES[kind_of(item.value)]
        return pb._ItemGetTypeResponse(found=pb._ItemGetTypeResponse._Found(item_type=kind))

    def UpdateTtl(self, request: Any, context: Context) -> pb._UpdateTtlResponse:
        """Overwrite the TTL, or only raise it (increase) or only lower it (decrease)."""
        how = request.WhichOneof("update_ttl")
        with self._items(context) as items:
            if how is None:
                raise BadRequest("UpdateTtl needs increase_to, decrease_to or overwrite_to")
            ttl_ms = getattr(request, how)
            require_ttl(ttl_ms)
            item = items.find(request.cache_key)
            if item is None:
                return pb._UpdateTtlResponse(missing=pb._UpdateTtlResponse._Missing())
            remaining = _remaining_ms(item, items)
            allowed = (
                how == "overwrite_to_milliseconds"
                or (how == "increase_to_milliseconds" and ttl_ms > remaining)
                or (how == "decrease_to_milliseconds" and ttl_ms < remaining)
            )
            if not allowed:
                return pb._UpdateTtlResponse(not_set=pb._UpdateTtlResponse._NotSet())
            item.expires_at = items.now + ttl_ms / 1000.0
        return pb._UpdateTtlResponse(set=pb._UpdateTtlResponse._Set())


def _get_response(value: bytes | None) -> pb._GetResponse:
    if value is None:
        return pb._GetResponse(result=pb.Miss)
    return pb._GetResponse(result=pb.Hit, cache_body=value)
