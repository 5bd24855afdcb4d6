"""What sending an outbox row takes, shared by the workflow stage that writes rows and the
publisher that drains them: the columns a send reads, the message envelope, the statement that
marks rows sent, and the per-topic advisory lock that an ordered route's driver holds (a drain
sends an ordered row only while it holds that lock too).

Statements are built once with bound parameters: building costs more than running them.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, text, update

from pipeline.models import OutboxMessage, OutboxStatus

SEND_COLUMNS = (
    OutboxMessage.id,
    OutboxMessage.route,
    OutboxMessage.event_id,
    OutboxMessage.kind,
    OutboxMessage.target_cache,
    OutboxMessage.target_topic,
    OutboxMessage.target_key,
    OutboxMessage.payload,
    OutboxMessage.message_id,
    OutboxMessage.ordering_key,
    OutboxMessage.attempts,
)
"""What sending a row needs (plus ``due``: whether its retry backoff has passed)."""


def envelope(message_id: str, text: str) -> str:
    """The outbound topic message: compact JSON with the id consumers dedupe on."""
    return json.dumps({"id": message_id, "text": text}, separators=(",", ":"), ensure_ascii=False)


def lock_id(key: Any) -> Any:
    """The bigint advisory lock of an ordered route's topic (collisions only serialize)."""
    return func.hashtextextended(key, 0)


TRY_LOCK = select(func.pg_try_advisory_lock(lock_id(bindparam("p_key"))))
_KEY_LOCKS = (
    "SELECT {fn}(h) FROM (SELECT DISTINCT hashtextextended(k, 0) AS h "
    "FROM unnest(CAST(:p_keys AS text[])) AS k ORDER BY h) AS ordered"
)
LOCK_ALL = text(_KEY_LOCKS.format(fn="pg_advisory_lock"))
"""Take several keys' locks, waiting for their holders, in one global order (no deadlock
between two callers doing the same)."""
UNLOCK_ALL = text(_KEY_LOCKS.format(fn="pg_advisory_unlock"))
UNLOCK = select(func.pg_advisory_unlock(lock_id(bindparam("p_key"))))
"""A topic's driver lock, taken if free and let go (built once: ~80 µs of CPU a call less)."""
MARK_SENT = (
    update(OutboxMessage)
    .where(OutboxMessage.id.in_(bindparam("p_sent", expanding=True)))
    .values(
        status=OutboxStatus.SENT,
        sent_at=func.now(),
        attempts=OutboxMessage.attempts + 1,
        last_error=None,
    )
)
"""Mark the rows ``p_sent`` sent (Momento accepted them)."""


def try_lock(conn: Connection, key: str) -> bool:
    """Take a topic's session advisory lock if free (``conn`` should be in autocommit)."""
    return bool(conn.execute(TRY_LOCK, {"p_key": key}).scalar())


def unlock(conn: Connection, key: str) -> None:
    """Let a topic's session advisory lock go."""
    conn.execute(UNLOCK, {"p_key": key})


FREE_KEYS = text(
    "SELECT k FROM unnest(CAST(:p_keys AS text[])) AS k "
    "WHERE CASE WHEN pg_try_advisory_lock(hashtextextended(k, 0))"
    " THEN pg_advisory_unlock(hashtextextended(k, 0)) ELSE false END"
)
"""Of ``p_keys``, the topics whose lock nobody holds (each taken and let go at once; CASE fixes
the order of the two calls). Same lock ids as ``lock_id``."""


def free_keys(conn: Connection, keys: list[str]) -> set[str]:
    """Of ``keys``, those whose topic lock is free now, in one round trip (autocommit ``conn``)."""
    if not keys:
        return set()
    return set(conn.execute(FREE_KEYS, {"p_keys": keys}).scalars())
