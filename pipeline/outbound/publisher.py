"""Sends outbox rows to Momento (topic publish, cache set/delete) and records what happened.

Who may send a row: an unordered row goes to whoever claims it with SELECT … FOR UPDATE SKIP
LOCKED, and stays locked from claim to mark. An ordered route's rows go, strictly in id order,
to whoever holds the route's per-topic advisory lock (the driver of that topic, or a drain that
got the lock), and a row waiting for a retry holds back the rows behind it. A worker that dies
after Momento accepted a row but before marking it leaves the row pending: it is sent again,
once per such crash, under the same message id. Every send first takes a token from the global
TokenBucket.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import Any, Protocol

import redis
from sqlalchemy import Connection, Engine, func, insert, literal, select, update

from pipeline.config import Settings
from pipeline.errors import MomentoError
from pipeline.models import DeadLetter, OutboxKind, OutboxMessage, OutboxStatus, outbox_status_is
from pipeline.outbound import momento_client
from pipeline.outbound.outbox_sql import (
    LOCK_ALL,
    MARK_SENT,
    SEND_COLUMNS,
    UNLOCK_ALL,
    envelope,
    try_lock,
    unlock,
)
from pipeline.outbound.ratelimit import LocalBucket, TokenBucket
from pipeline.stores import broker_url, is_redis, redis_url

logger = logging.getLogger(__name__)

BUCKET_KEY = "pipeline:publish-bucket"
SEND_THREADS = 8
"""Keys whose rows ``flush_keys_waiting`` sends at once (each key's own rows one at a time)."""


class Bucket(Protocol):
    """Anything that blocks until one more operation is allowed."""

    def acquire(self, timeout_s: float = 60.0) -> None: ...


@dataclass
class SendReport:
    """What one call sent; ``retry_in_s`` is the soonest backoff it set (None if none)."""

    sent: int = 0
    retried: int = 0
    dead: int = 0
    retry_in_s: float | None = None

    def add(self, other: SendReport) -> None:
        """Fold another report into this one."""
        self.sent += other.sent
        self.retried += other.retried
        self.dead += other.dead
        if other.retry_in_s is not None:
            self.retry_in_s = min(self.retry_in_s or other.retry_in_s, other.retry_in_s)


def make_bucket(settings: Settings) -> Bucket:
    """The global Redis bucket on the broker, or a per-process one for a non-Redis broker."""
    rate, burst = settings.pipeline_publish_rate_per_s, settings.pipeline_publish_burst
    url = broker_url(settings)
    if is_redis(url):
        return TokenBucket(redis.Redis.from_url(redis_url(url)), BUCKET_KEY, rate, burst)
    logger.warning("broker is not Redis: publish rate limited per process rate=%s", rate)
    return LocalBucket(rate, burst)


class Publisher:
    """Sends pending outbox rows; one per process (it owns Momento clients)."""

    def __init__(self, settings: Settings, engine: Engine, bucket: Bucket | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.bucket = bucket if bucket is not None else make_bucket(settings)
        self._bucket_lock = threading.Lock()

    @cached_property
    def topics(self) -> Any:
        """Topic client for publishing (a short deadline suits unary calls)."""
        return momento_client.topic_client(self.settings, timeout=momento_client.PUBLISH_TIMEOUT)

    @cached_property
    def caches(self) -> Any:
        """Cache client for write-through sets and deletes."""
        return momento_client.cache_client(self.settings)

    def close(self) -> None:
        """Close the Momento clients this publisher opened."""
        for name in ("topics", "caches"):
            client = self.__dict__.pop(name, None)
            if client is not None:
                momento_client.close_client(client)
        senders = self.__dict__.pop("_senders", None)
        if senders is not None:
            senders.shutdown(wait=True)

    # -- ordered rows: the caller holds the topic's lock ----------------------------------------

    def send_locked(self, conn: Connection, rows: Sequence[Any]) -> SendReport:
        """Send an ordering key's pending rows in id order; stop at one that must wait.

        The caller holds the key's advisory lock, so the rows are its alone; ``conn`` is in
        autocommit, so each row is marked the moment it is sent.
        """
        report = SendReport()
        for row in rows:
            if not row.due:
                break
            step = self._attempt(conn, row)
            report.add(step)
            if step.retried:
                break
        return report

    def flush_key(self, conn: Connection, key: str) -> SendReport:
        """Send what an ordering key has pending (leftovers of crashes, late runs, replays)."""
        due = (OutboxMessage.next_attempt_at <= func.now()).label("due")
        rows = conn.execute(
            select(*SEND_COLUMNS, due)
            .where(OutboxMessage.ordering_key == key, outbox_status_is(OutboxStatus.PENDING))
            .order_by(OutboxMessage.id)
        ).all()
        return self.send_locked(conn, rows) if rows else SendReport()

    def try_flush_key(self, key: str) -> SendReport:
        """``flush_key`` if the key's lock is free; its holder sends the rows otherwise."""
        with self.engine.connect() as raw:
            conn = raw.execution_options(isolation_level="AUTOCOMMIT")
            if not try_lock(conn, key):
                return SendReport()
            try:
                return self.flush_key(conn, key)
            finally:
                unlock(conn, key)

    def flush_keys_waiting(self, keys: Sequence[str]) -> SendReport:
        """Send what several ordering keys have pending, waiting for their locks.

        For keys whose rows are few and quick to send (change records' items): a holder that
        read a key's rows before ours committed would leave them to the periodic drain; waiting
        for it sends them now. The keys' locks are taken together in one global order (two
        callers cannot deadlock), their rows read in one query and marked sent in one update:
        a few round trips per batch instead of per key. Each key's rows go in id order, keys side
        by side on a few threads; a row that must wait holds back the rest of its key only.
        """
        if not keys:
            return SendReport()
        report = SendReport()
        sent: list[int] = []
        with self.engine.connect() as raw:
            conn = raw.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(LOCK_ALL, {"p_keys": list(keys)})
            try:
                due = (OutboxMessage.next_attempt_at <= func.now()).label("due")
                rows = conn.execute(
                    select(*SEND_COLUMNS, due)
                    .where(
                        OutboxMessage.ordering_key.in_(list(keys)),
                        outbox_status_is(OutboxStatus.PENDING),
                    )
                    .order_by(OutboxMessage.ordering_key, OutboxMessage.id)
                ).all()
                by_key: dict[str, list[Any]] = {}
                for row in rows:
                    by_key.setdefault(row.ordering_key, []).append(row)
                # Clients are made here, once, not raced for by the sending threads.
                if any(row.kind is OutboxKind.TOPIC_PUBLISH for row in rows):
                    assert self.topics is not None
                if any(row.kind is not OutboxKind.TOPIC_PUBLISH for row in rows):
                    assert self.caches is not None
                for outcomes in self._senders.map(self._send_in_order, by_key.values()):
                    for row, exc in outcomes:
                        if exc is None:
                            sent.append(row.id)
                            report.sent += 1
                        else:
                            report.add(self._failed(conn, row, exc))
                self.mark_sent(conn, sent)
            finally:
                conn.execute(UNLOCK_ALL, {"p_keys": list(keys)})
        return report

    @cached_property
    def _senders(self) -> ThreadPoolExecutor:
        """Threads sending several keys' rows side by side (made after a prefork pool forked)."""
        return ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="outbox-send")

    def _send_in_order(self, rows: Sequence[Any]) -> list[tuple[Any, Exception | None]]:
        """Send one key's rows in order, recording nothing; stop at one that must wait (not due
        yet, or failed and to be retried). Returns each attempted row with its error, if any."""
        outcomes: list[tuple[Any, Exception | None]] = []
        for row in rows:
            if not row.due:
                break
            try:
                self.send_now(row)
            except Exception as exc:
                outcomes.append((row, exc))
                if self._will_retry(row, exc):
                    break
                continue
            outcomes.append((row, None))
        return outcomes

    # -- unordered rows: claimed with SKIP LOCKED ------------------------------------------------

    def send_one(self, outbox_id: int) -> SendReport:
        """Claim and send one unordered row, unless another worker has it or it is not due."""
        with self.engine.begin() as conn:
            row = conn.execute(
                select(*SEND_COLUMNS, literal(True).label("due"))
                .where(
                    OutboxMessage.id == outbox_id,
                    outbox_status_is(OutboxStatus.PENDING),
                    OutboxMessage.next_attempt_at <= func.now(),
                )
                .with_for_update(skip_locked=True)
            ).first()
            return SendReport() if row is None else self._attempt(conn, row)

    def send_rows(self, rows: Sequence[Any]) -> SendReport:
        """Send rows a run just committed: unordered ones by claim, ordered keys via their lock."""
        report = SendReport()
        keys = sorted({row.ordering_key for row in rows if row.ordering_key is not None})
        for key in keys:
            report.add(self.try_flush_key(key))
        for row in rows:
            if row.ordering_key is None:
                report.add(self.send_one(row.id))
        return report

    def send_ids(self, ids: list[int]) -> SendReport:
        """``send_rows`` for rows known by id (still pending and due, or they are skipped)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(OutboxMessage.id, OutboxMessage.ordering_key).where(
                    OutboxMessage.id.in_(ids)
                )
            ).all()
        return self.send_rows(rows)

    def drain(self, limit: int = 500) -> SendReport:
        """Send whatever is due (the periodic safety net); busy ordered keys are left alone."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(OutboxMessage.id, OutboxMessage.ordering_key)
                .where(
                    outbox_status_is(OutboxStatus.PENDING),
                    OutboxMessage.next_attempt_at <= func.now(),
                )
                .order_by(OutboxMessage.id)
                .limit(limit)
            ).all()
        return self.send_rows(rows)

    # -- one row ------------------------------------------------------------------------------

    def mark_sent(self, conn: Connection, ids: Sequence[int]) -> None:
        """Mark rows sent (by an ordered sender) in one statement."""
        if ids:
            conn.execute(MARK_SENT, {"p_sent": list(ids)})

    def _attempt(self, conn: Connection, row: Any, mark: list[int] | None = None) -> SendReport:
        """Send one row that is this caller's alone and record the outcome through ``conn``.

        With ``mark`` a sent row's id is added there, to be marked with others, instead of at once.
        """
        try:
            self.send_now(row)
        except Exception as exc:
            return self._failed(conn, row, exc)
        if mark is None:
            conn.execute(MARK_SENT, {"p_sent": [row.id]})
        else:
            mark.append(row.id)
        return SendReport(sent=1)

    def _will_retry(self, row: Any, exc: Exception) -> bool:
        """Whether a failed send is tried again later (else the row is dead)."""
        transient = exc.transient if isinstance(exc, MomentoError) else True
        return transient and row.attempts + 1 < self.settings.pipeline_publish_max_attempts

    def _failed(self, conn: Connection, row: Any, exc: Exception) -> SendReport:
        """Record a failed send: a retry with backoff, or a dead row and a dead letter."""
        if isinstance(exc, MomentoError):
            if self._will_retry(row, exc):
                return self._retry_later(conn, row, f"{exc.code}: {exc}")
            return self._give_up(conn, row, exc.code, str(exc))
        # the SDK, the rate limiter or the network failed unexpectedly
        logger.warning("send failed id=%d error=%r", row.id, exc)
        if self._will_retry(row, exc):
            return self._retry_later(conn, row, repr(exc))
        return self._give_up(conn, row, type(exc).__name__, repr(exc))

    def send_now(self, row: Any) -> None:
        """One row's Momento operation, within the rate limit; records nothing (raises)."""
        with self._bucket_lock:  # an ordered sender's thread may take tokens too
            self.bucket.acquire()
        self._perform(row)

    def _perform(self, row: Any) -> None:
        """The one Momento call a row asks for (raises MomentoError)."""
        payload = row.payload
        if row.kind is OutboxKind.TOPIC_PUBLISH:
            message = envelope(row.message_id, str(payload["text"]))
            momento_client.publish(self.topics, row.target_cache, str(row.target_topic), message)
        elif row.kind is OutboxKind.CACHE_SET:
            ttl = timedelta(seconds=int(payload["ttl_seconds"]))
            key, value = str(row.target_key), str(payload["value"])
            momento_client.cache_set(self.caches, row.target_cache, key, value, ttl)
        else:
            momento_client.cache_delete(self.caches, row.target_cache, str(row.target_key))

    def _retry_later(self, conn: Connection, row: Any, error: str) -> SendReport:
        cap = self.settings.pipeline_publish_backoff_max_s
        delay_s = min(cap, 0.5 * 2**row.attempts) * random.uniform(0.8, 1.2)
        conn.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == row.id)
            .values(
                attempts=OutboxMessage.attempts + 1,
                last_error=error[:2000],
                next_attempt_at=func.now() + timedelta(seconds=delay_s),
            )
        )
        logger.info("send retry id=%d attempt=%d in_s=%.2f", row.id, row.attempts + 1, delay_s)
        return SendReport(retried=1, retry_in_s=delay_s)

    def _give_up(self, conn: Connection, row: Any, code: str, reason: str) -> SendReport:
        """Mark the row dead and dead-letter it, in one statement (``conn`` may autocommit)."""
        marked = (
            update(OutboxMessage)
            .where(OutboxMessage.id == row.id)
            .values(
                status=OutboxStatus.DEAD, attempts=OutboxMessage.attempts + 1, last_error=reason
            )
            .returning(OutboxMessage.id)
            .cte("marked")
        )
        payload = {
            "outbox_id": row.id,
            "route": row.route,
            "event_id": row.event_id,
            "kind": row.kind.value,
            "target_cache": row.target_cache,
            "target_topic": row.target_topic,
            "target_key": row.target_key,
            "code": code,
        }
        conn.execute(
            insert(DeadLetter).from_select(
                ["kind", "reason", "payload"],
                select(
                    literal("publish"),
                    literal(reason[:2000]),
                    literal(payload, DeadLetter.payload.type),
                ).select_from(marked),
            )
        )
        logger.warning("send dead id=%d route=%s code=%s", row.id, row.route, code)
        return SendReport(dead=1)
