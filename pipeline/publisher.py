"""Sends outbox rows to Momento (topic publish, cache set/delete) and records what happened.

Each row is sent in its own transaction that holds the row locked (FOR UPDATE SKIP LOCKED) from
claim to mark, so two workers never send the same row. A worker that dies after Momento accepted
a row but before its transaction committed leaves the row pending: it is sent again, once per
such crash, under the same message id. Rows of an ordered route share an ordering key and are
sent strictly in id order under a per-key advisory lock; a row waiting for a retry holds back the
rows behind it. Every send first takes a token from the global TokenBucket.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import Any, Protocol

import redis
from sqlalchemy import Connection, Engine, func, select, update

from pipeline import momento_client
from pipeline.celery_app import broker_url
from pipeline.config import Settings
from pipeline.errors import MomentoError
from pipeline.models import OutboxKind, OutboxMessage, OutboxStatus
from pipeline.outbox import dead_letter, envelope
from pipeline.ratelimit import LocalBucket, TokenBucket

logger = logging.getLogger(__name__)

BUCKET_KEY = "pipeline:publish-bucket"
_CLAIM = select(OutboxMessage).where(
    OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.next_attempt_at <= func.now()
)


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


def lock_id(namespace: str, key: str) -> Any:
    """A bigint advisory-lock id for ``key`` (collisions only serialize, never break order)."""
    return func.hashtextextended(f"{namespace}\x1f{key}", 0)


def make_bucket(settings: Settings) -> Bucket:
    """The global Redis bucket on the broker, or a per-process one for a non-Redis broker."""
    rate, burst = settings.pipeline_publish_rate_per_s, settings.pipeline_publish_burst
    url = broker_url(settings)
    if url.startswith(("redis://", "rediss://", "redis+socket://")):
        return TokenBucket(redis.Redis.from_url(url), BUCKET_KEY, rate, burst)
    logger.warning("broker is not Redis: publish rate limited per process rate=%s", rate)
    return LocalBucket(rate, burst)


class Publisher:
    """Sends pending outbox rows; one per process (it owns Momento clients)."""

    def __init__(self, settings: Settings, engine: Engine, bucket: Bucket | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.bucket = bucket if bucket is not None else make_bucket(settings)

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

    def send_ids(self, ids: list[int]) -> SendReport:
        """Send rows just written (their ordered keys are drained in order, waiting for the key)."""
        report = SendReport()
        if not ids:
            return report
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(OutboxMessage.id, OutboxMessage.ordering_key).where(
                    OutboxMessage.id.in_(ids)
                )
            ).all()
        keys = sorted({row.ordering_key for row in rows if row.ordering_key is not None})
        for key in keys:
            report.add(self.drain_key(key, wait=True))
        for row in rows:
            if row.ordering_key is None:
                report.add(self.send_one(row.id))
        return report

    def drain(self, limit: int = 500) -> SendReport:
        """Send whatever is due (the periodic safety net); busy ordered keys are left alone."""
        report = SendReport()
        with self.engine.connect() as conn:
            due = _CLAIM.with_only_columns(OutboxMessage.id, OutboxMessage.ordering_key)
            rows = conn.execute(due.order_by(OutboxMessage.id).limit(limit)).all()
        for key in sorted({row.ordering_key for row in rows if row.ordering_key is not None}):
            report.add(self.drain_key(key, wait=False))
        for row in rows:
            if row.ordering_key is None:
                report.add(self.send_one(row.id))
        return report

    def send_one(self, outbox_id: int) -> SendReport:
        """Claim and send one unordered row, unless another worker has it or it is not due."""
        with self.engine.begin() as conn:
            row = conn.execute(
                _CLAIM.where(OutboxMessage.id == outbox_id).with_for_update(skip_locked=True)
            ).first()
            return SendReport() if row is None else self._attempt(conn, row)

    def drain_key(self, key: str, *, wait: bool) -> SendReport:
        """Send an ordering key's pending rows in id order; stop at one that must wait."""
        report = SendReport()
        while True:
            with self.engine.begin() as conn:
                take = func.pg_advisory_xact_lock if wait else func.pg_try_advisory_xact_lock
                locked = conn.execute(select(take(lock_id("outbox", key)))).scalar()
                if not wait and not locked:
                    return report
                row = conn.execute(
                    select(
                        OutboxMessage, (OutboxMessage.next_attempt_at <= func.now()).label("due")
                    )
                    .where(
                        OutboxMessage.ordering_key == key,
                        OutboxMessage.status == OutboxStatus.PENDING,
                    )
                    .order_by(OutboxMessage.id)
                    .limit(1)
                    .with_for_update(of=OutboxMessage)
                ).first()
                if row is None or not row.due:
                    return report
                step = self._attempt(conn, row)
            report.add(step)
            if step.retried:
                return report

    def _attempt(self, conn: Connection, row: Any) -> SendReport:
        """Send one claimed row and record the outcome in the claiming transaction."""
        try:
            self.bucket.acquire()
            self._perform(row)
        except MomentoError as exc:
            if exc.transient and row.attempts + 1 < self.settings.pipeline_publish_max_attempts:
                return self._retry_later(conn, row, f"{exc.code}: {exc}")
            return self._give_up(conn, row, exc.code, str(exc))
        except Exception as exc:  # the SDK, the rate limiter or the network failed unexpectedly
            logger.warning("send failed id=%d error=%r", row.id, exc)
            if row.attempts + 1 < self.settings.pipeline_publish_max_attempts:
                return self._retry_later(conn, row, repr(exc))
            return self._give_up(conn, row, type(exc).__name__, repr(exc))
        conn.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == row.id)
            .values(
                status=OutboxStatus.SENT,
                sent_at=func.now(),
                attempts=OutboxMessage.attempts + 1,
                last_error=None,
            )
        )
        return SendReport(sent=1)

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
        conn.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == row.id)
            .values(
                status=OutboxStatus.DEAD, attempts=OutboxMessage.attempts + 1, last_error=reason
            )
        )
        dead_letter(
            conn,
            "publish",
            reason,
            {
                "outbox_id": row.id,
                "route": row.route,
                "event_id": row.event_id,
                "kind": row.kind.value,
                "target_cache": row.target_cache,
                "target_topic": row.target_topic,
                "target_key": row.target_key,
                "code": code,
            },
        )
        logger.warning("send dead id=%d route=%s code=%s", row.id, row.route, code)
        return SendReport(dead=1)
