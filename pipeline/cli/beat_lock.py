"""Exactly one beat per broker: a lock in Redis that the running beat keeps alive.

Two beats send every periodic task twice. `pipeline beat` takes ``pipeline:beat`` (redis-py's
``Lock``: a key with a token and a TTL) before it starts and renews it every few seconds; a
second beat waits at most one TTL (room for a killed holder's lock to expire) and then refuses,
naming the holder. AMQP brokers have no such lock: there, running one beat is the operator's job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import redis
from redis.exceptions import LockError

from pipeline.errors import BeatRunning
from pipeline.stores import hide_password, is_redis, redis_url

logger = logging.getLogger(__name__)

KEY = "pipeline:beat"
TTL_S = 15.0
RENEW_S = 5.0


@contextlib.contextmanager
def sole_beat(broker_url: str, wait_s: float = TTL_S + 2) -> Iterator[None]:
    """Hold the broker's beat lock for the block; BeatRunning if another beat keeps it."""
    if not is_redis(broker_url):
        yield
        return
    client = redis.Redis.from_url(redis_url(broker_url), socket_timeout=5, socket_connect_timeout=5)
    lock = client.lock(KEY, timeout=TTL_S, thread_local=False)
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while not lock.acquire(blocking=False, token=token):
        if time.monotonic() > deadline:
            holder = client.get(KEY)
            client.close()
            name = holder.decode() if isinstance(holder, bytes) else holder
            raise BeatRunning(
                f"another beat runs on the broker at {hide_password(broker_url)} (holder "
                f"{name or '?'}): run exactly one beat per deployment"
            )
        time.sleep(0.5)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lock, stop), name="beat-lock", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(RENEW_S + 1)
        with contextlib.suppress(LockError, redis.RedisError):
            lock.release()
        client.close()


def _renew(lock: redis.lock.Lock, stop: threading.Event) -> None:
    """Keep the lock alive; a beat that lost it (a broker restart) stops rather than double."""
    while not stop.wait(RENEW_S):
        try:
            lock.reacquire()
        except LockError:
            logger.error("beat lost its lock on the broker; stopping so it never runs twice")
            os.kill(os.getpid(), signal.SIGTERM)
            return
        except redis.RedisError as exc:  # the broker is down: beat itself reports it
            logger.warning("beat lock renewal failed error=%s", exc)
