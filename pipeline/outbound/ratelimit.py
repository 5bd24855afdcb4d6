"""A token bucket shared by every worker, kept in Redis and updated by one Lua script.

Momento accounts have per-second operation quotas, so outbound operations are limited globally,
not per process. The script reads Redis's own clock (TIME), so workers on machines whose clocks
disagree still share one rate. The bucket holds at most ``burst`` tokens; with the default burst
(a tenth of a second's worth, at least 1) no one-second window sees more than rate + burst
tokens granted. A process takes up to ``min(burst, 32)`` tokens per round trip and must use them
within burst / rate seconds, so busy workers touch Redis rarely, and operations in any window of
W seconds stay within rate x W + 2 x burst (exactly rate x W + 1 with burst 1).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import redis

logger = logging.getLogger(__name__)

# KEYS[1]: bucket hash. ARGV: rate per second, burst, tokens wanted.
# Returns {tokens granted, 0} or {0, ms to wait for one}.
TAKE_TOKENS = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + tonumber(now[2]) / 1000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now_ms
end
tokens = math.min(burst, tokens + math.max(0, now_ms - at) * rate / 1000)
local granted = 0
local wait = 0
if tokens >= 1 then
  granted = math.min(want, math.floor(tokens))
  tokens = tokens - granted
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now_ms))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {granted, wait}
"""


def default_burst(rate_per_s: float) -> float:
    """A tenth of a second's worth of tokens, at least one."""
    return max(1.0, rate_per_s / 10)


class TokenBucket:
    """``acquire()`` blocks until this process may perform one more outbound operation."""

    def __init__(
        self, client: redis.Redis, key: str, rate_per_s: float, burst: float | None = None
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        self.key = key
        self.rate_per_s = rate_per_s
        self.burst = burst if burst is not None else default_burst(rate_per_s)
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {self.burst}")
        self.batch = max(1, min(int(self.burst), 32))
        self._script: Any = client.register_script(TAKE_TOKENS)
        self._stash = 0
        self._stash_until = 0.0

    def try_acquire(self) -> float:
        """Take a token if one is there; else return the seconds until one will be."""
        now = time.monotonic()
        if self._stash > 0 and now < self._stash_until:
            self._stash -= 1
            return 0.0
        args = [self.rate_per_s, self.burst, self.batch]
        granted, wait_ms = (int(v) for v in self._script(keys=[self.key], args=args))
        if granted:
            self._stash, self._stash_until = granted - 1, now + self.burst / self.rate_per_s
            return 0.0
        return wait_ms / 1000

    def acquire(self, timeout_s: float = 60.0) -> None:
        """Take a token, sleeping as long as the bucket says; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            wait_s = self.try_acquire()
            if wait_s <= 0:
                return
            if time.monotonic() + wait_s > deadline:
                raise TimeoutError(f"no publish token within {timeout_s:g} s")
            time.sleep(wait_s)


class LocalBucket:
    """The same limit within one process, for brokers that are not Redis (e.g. RabbitMQ)."""

    def __init__(self, rate_per_s: float, burst: float | None = None) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst if burst is not None else default_burst(rate_per_s)
        self._tokens = self.burst
        self._at = time.monotonic()

    def acquire(self, timeout_s: float = 60.0) -> None:
        """Take a token, sleeping until one is there."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        if self._tokens < 1:
            wait_s = (1 - self._tokens) / self.rate_per_s
            if wait_s > timeout_s:
                raise TimeoutError(f"no publish token within {timeout_s:g} s")
            time.sleep(math.ceil(wait_s * 1000) / 1000)
            self._at = time.monotonic()
            self._tokens = 1.0
        self._tokens -= 1
