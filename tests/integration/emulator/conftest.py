"""A local server for the cache data-plane tests, the SDK client for it, and raw gRPC calls for
the RPCs the Python SDK 1.29.1 does not make (batches, TTL calls, SetIf, retain, …)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from momento import CacheClient
from momento_wire_types import cacheclient_pb2_grpc as cache_grpc

from pipeline.emulator import EmulatorServer
from tests.integration.emulator_support import cache_client

DATA_CACHE = "data-plane"


class RawCache:
    """``Scs`` stub calls with the ``cache`` header the SDK would send."""

    def __init__(self, port: int) -> None:
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._stub = cache_grpc.ScsStub(self._channel)

    def __call__(self, method: str, request: Any, cache: str = DATA_CACHE) -> Any:
        call = getattr(self._stub, method)
        return call(request, metadata=(("cache", cache),), timeout=10)

    def close(self) -> None:
        self._channel.close()


@pytest.fixture(scope="package")
def data_emu() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, admin_port=None, idle_reset_s=0).start()
    server.create_cache(DATA_CACHE)
    yield server
    server.stop()


@pytest.fixture(scope="package")
def sdk(data_emu: EmulatorServer) -> Iterator[CacheClient]:
    with cache_client(data_emu.port) as client:
        yield client


@pytest.fixture(scope="package")
def raw(data_emu: EmulatorServer) -> Iterator[RawCache]:
    stub = RawCache(data_emu.port)
    yield stub
    stub.close()
