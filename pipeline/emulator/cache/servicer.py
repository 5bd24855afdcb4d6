"""The ``cache_client.Scs`` servicer: every call family on one service."""

from __future__ import annotations

from momento_wire_types import cacheclient_pb2_grpc as cache_grpc

from pipeline.emulator.cache.dictionaries import DictionaryCalls
from pipeline.emulator.cache.lists import ListCalls
from pipeline.emulator.cache.scalars import ScalarCalls
from pipeline.emulator.cache.sets import SetCalls
from pipeline.emulator.cache.sorted_sets import SortedSetCalls


class CacheServicer(
    ScalarCalls, ListCalls, DictionaryCalls, SetCalls, SortedSetCalls, cache_grpc.ScsServicer
):
    """The cache data plane; the cache name is in each call's ``cache`` metadata header.
    Every method of ``ScsServicer`` is overridden (a test checks it), so none answers with the
    generated base class's NotImplementedError."""
