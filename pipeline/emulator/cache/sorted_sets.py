"""Sorted-set calls: put, fetch by rank or score, scores, rank, increment, remove, lengths and
union-store.

Order is by score, ties by element bytes; descending is the exact reverse, so ranks in one order
mirror the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

from momento_wire_types import cacheclient_pb2 as pb

from pipeline.emulator.cache.calls import BadRequest, Calls, Context, require_ttl
from pipeline.emulator.state import Keyspace, SortedSet

FetchRequest = pb._SortedSetFetchRequest
Bound = tuple[float, bool] | None  # (score, exclusive), None for unbounded


def _sum(a: float, b: float) -> float:
    return a + b


AGGREGATES: dict[int, Callable[[float, float], float]] = {
    pb._SortedSetUnionStoreRequest.SUM: _sum,
    pb._SortedSetUnionStoreRequest.MIN: min,
    pb._SortedSetUnionStoreRequest.MAX: max,
}


def _stored(items: Keyspace, key: bytes) -> SortedSet | None:
    item = items.collection(key, SortedSet)
    return None if item is None else cast(SortedSet, item.value)


def _ordered(stored: SortedSet, descending: bool) -> list[tuple[bytes, float]]:
    ascending = sorted(stored.items(), key=lambda pair: (pair[1], pair[0]))
    return ascending[::-1] if descending else ascending


def _within(score: float, low: Bound, high: Bound) -> bool:
    if low is not None and (score < low[0] or (low[1] and score == low[0])):
        return False
    return not (high is not None and (score > high[0] or (high[1] and score == high[0])))


def _by_index(ordered: list[tuple[bytes, float]], by: Any) -> list[tuple[bytes, float]]:
    start = by.inclusive_start_index if by.WhichOneof("start") == "inclusive_start_index" else None
    end = by.exclusive_end_index if by.WhichOneof("end") == "exclusive_end_index" else None
    return ordered[start:end]


def _by_score(ordered: list[tuple[bytes, float]], by: Any) -> list[tuple[bytes, float]]:
    low: Bound = (by.min_score.score, by.min_score.exclusive) if by.HasField("min_score") else None
    high: Bound = (by.max_score.score, by.max_score.exclusive) if by.HasField("max_score") else None
    chosen = [pair for pair in ordered if _within(pair[1], low, high)][by.offset :]
    return chosen if by.count < 0 else chosen[: by.count]


def _length_bounds(request: Any) -> tuple[Bound, Bound]:
    low_kind, high_kind = request.WhichOneof("min"), request.WhichOneof("max")
    low: Bound = None
    high: Bound = None
    if low_kind in ("inclusive_min", "exclusive_min"):
        low = (getattr(request, low_kind), low_kind == "exclusive_min")
    if high_kind in ("inclusive_max", "exclusive_max"):
        high = (getattr(request, high_kind), high_kind == "exclusive_max")
    return low, high


def _finite(score: float) -> float:
    if math.isnan(score):
        raise BadRequest("score must be a number")
    return score


class SortedSetCalls(Calls):
    """Sorted sets of bytes with float scores; an emptied sorted set disappears."""

    def _write(self, items: Keyspace, request: Any) -> SortedSet:
        require_ttl(request.ttl_milliseconds)
        item = items.write_collection(
            request.set_name, SortedSet, request.ttl_milliseconds, request.refresh_ttl
        )
        return cast(SortedSet, item.value)

    def SortedSetPut(self, request: Any, context: Context) -> pb._SortedSetPutResponse:
        self._check_size(context, sum(len(e.value) + 8 for e in request.elements))
        with self._items(context) as items:
            scores = {e.value: _finite(e.score) for e in request.elements}
            self._write(items, request).update(scores)
            items.drop_if_empty(request.set_name)
        return pb._SortedSetPutResponse()

    def SortedSetIncrement(self, request: Any, context: Context) -> pb._SortedSetIncrementResponse:
        with self._items(context) as items:
            stored = self._write(items, request)
            score = _finite(stored.get(request.value, 0.0) + request.amount)
            stored[request.value] = score
        return pb._SortedSetIncrementResponse(score=score)

    def SortedSetFetch(self, request: Any, context: Context) -> pb._SortedSetFetchResponse:
        with self._items(context) as items:
            stored = _stored(items, request.set_name)
            if stored is None:
                return pb._SortedSetFetchResponse(missing=pb._SortedSetFetchResponse._Missing())
            ordered = _ordered(stored, request.order == FetchRequest.DESCENDING)
            if request.WhichOneof("range") == "by_score":
                chosen = _by_score(ordered, request.by_score)
            else:
                chosen = _by_index(ordered, request.by_index)
        found = pb._SortedSetFetchResponse._Found
        if request.with_scores:
            elements = [pb._SortedSetElement(value=v, score=s) for v, s in chosen]
            return pb._SortedSetFetchResponse(
                found=found(values_with_scores=found._ValuesWithScores(elements=elements))
            )
        values = found._Values(values=[v for v, _ in chosen])
        return pb._SortedSetFetchResponse(found=found(values=values))

    def SortedSetGetScore(self, request: Any, context: Context) -> pb._SortedSetGetScoreResponse:
        response = pb._SortedSetGetScoreResponse
        with self._items(context) as items:
            stored = _stored(items, request.set_name)
            if stored is None:
                return response(missing=response._SortedSetMissing())
            scores = [stored.get(value) for value in request.values]
        part = response._SortedSetGetScoreResponsePart
        parts = [
            part(result=pb.Miss) if s is None else part(result=pb.Hit, score=s) for s in scores
        ]
        return response(found=response._SortedSetFound(elements=parts))

    def SortedSetGetRank(self, request: Any, context: Context) -> pb._SortedSetGetRankResponse:
        response = pb._SortedSetGetRankResponse
        with self._items(context) as items:
            stored = _stored(items, request.set_name)
            if stored is None:
                return response(missing=response._SortedSetMissing())
            descending = request.order == pb._SortedSetGetRankRequest.DESCENDING
            ranks = {v: i for i, (v, _) in enumerate(_ordered(stored, descending))}
            rank = ranks.get(request.value)
        if rank is None:
            return response(element_rank=response._RankResponsePart(result=pb.Miss))
        return response(element_rank=response._RankResponsePart(result=pb.Hit, rank=rank))

    def SortedSetRemove(self, request: Any, context: Context) -> pb._SortedSetRemoveResponse:
        with self._items(context) as items:
            stored = _stored(items, request.set_name)
            if stored is not None:
                if request.WhichOneof("remove_elements") == "all":
                    stored.clear()
                else:
                    for value in request.some.values:
                        stored.pop(value, None)
                items.drop_if_empty(request.set_name)
        return pb._SortedSetRemoveResponse()

    def SortedSetLength(self, request: Any, context: Context) -> pb._SortedSetLengthResponse:
        response = pb._SortedSetLengthResponse
        with self._items(context) as items:
            stored = _stored(items, request.set_name)
            if stored is None:
                return response(missing=response._Missing())
            length = len(stored)
        return response(found=response._Found(length=length))

    def SortedSetLengthByScore(
        self, request: Any, context: Context
    ) -> pb._SortedSetLengthByScoreResponse:
        response = pb._SortedSetLengthByScoreResponse
        with self._items(context) as items:
            low, high = _length_bounds(request)
            stored = _stored(items, request.set_name)
            if stored is None:
                return response(missing=response._Missing())
            length = sum(1 for score in stored.values() if _within(score, low, high))
        return response(found=response._Found(length=length))

    def SortedSetUnionStore(
        self, request: Any, context: Context
    ) -> pb._SortedSetUnionStoreResponse:
        """Store the weighted union of the sources (SUM, MIN or MAX of the scores)."""
        aggregate = AGGREGATES[request.aggregate]
        with self._items(context) as items:
            require_ttl(request.ttl_milliseconds)
            union = SortedSet()
            for source in request.sources:
                for value, score in (_stored(items, source.set_name) or SortedSet()).items():
                    weighted = score * source.weight
                    union[value] = aggregate(union[value], weighted) if value in union else weighted
            if union:
                items.put(request.set_name, union, request.ttl_milliseconds)
            else:
                items.delete(request.set_name)
        return pb._SortedSetUnionStoreResponse(length=len(union))
