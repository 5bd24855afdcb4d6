"""At most one ``advance`` task waits per ordered topic, however many batches nudge it.

A batch whose topics no driver holds sends ``tasks.workflows.advance`` for each of them
(``dispatch.nudge``). During a backlog no driver runs yet (workers take the ingest queue first),
so every stored batch used to send one more advance per topic: work that grew with the backlog.
A nudge now marks the topic in a short-lived broker key and sends a task only if no mark was
there; the advance task clears the mark as it starts, before it looks for events, so events
stored after that are nudged again. A lost task costs at most ``TTL_MS`` (and beat's sweep sends
one regardless). Redis brokers only; with any other broker every nudge sends a task, as before.
"""

from __future__ import annotations

import logging
from functools import cache

import redis

from pipeline.stores import is_redis, redis_url

logger = logging.getLogger(__name__)

PREFIX = "pipeline:advance:pending:"
TTL_MS = 30_000
TIMEOUT_S = 0.5


@cache
def _client(broker: str) -> redis.Redis | None:
    if not is_redis(broker):
        return None
    return redis.Redis.from_url(
        redis_url(broker), socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
    )


def mark(broker: str, topic_keys: list[str]) -> set[str]:
    """Mark topics (their lock keys) as having an advance on the way, in one broker round trip;
    returns those that had none (send one for each). Any doubt (no Redis broker, a broker error)
    sends one for every topic."""
    client = _client(broker)
    if client is None or not topic_keys:
        return set(topic_keys)
    pipe = client.pipeline(transaction=False)
    for key in topic_keys:
        pipe.set(f"{PREFIX}{key}", b"1", nx=True, px=TTL_MS)
    try:
        found = pipe.execute()
    except redis.RedisError as exc:
        logger.warning("advance marks not set error=%r", exc)
        return set(topic_keys)
    return {key for key, was_set in zip(topic_keys, found, strict=True) if was_set}


def clear(broker: str, topic_key: str) -> None:
    """An advance task starts on the topic: later nudges send another."""
    client = _client(broker)
    if client is None:
        return
    try:
        client.delete(f"{PREFIX}{topic_key}")
    except redis.RedisError as exc:  # the mark expires by itself
        logger.warning("advance mark not cleared error=%r", exc)
