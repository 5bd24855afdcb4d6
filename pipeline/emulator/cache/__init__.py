"""The cache data plane (``cache_client.Scs``): one module per family of calls over the store."""

from pipeline.emulator.cache.servicer import CacheServicer

__all__ = ["CacheServicer"]
