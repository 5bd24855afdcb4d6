"""Can each store be used right now: one question per function, one line per answer.

Shared by every command that opens a store (``pipeline.cli.common.services``) and by
``pipeline check``. Every probe gives up within a few seconds, and its failure is a
``StoreUnavailable`` whose message names the store, its URL (password hidden) and what to do.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import redis
from alembic.runtime.migration import MigrationContext
from kombu import Connection
from sqlalchemy import create_engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from pipeline.cli.migrate import head_revision
from pipeline.errors import StoreUnavailable
from pipeline.stores import hide_password, is_redis, redis_url, sqlalchemy_url

CONNECT_TIMEOUT_S = 3

Level = Literal["ok", "warn", "FAIL"]


@dataclass(frozen=True)
class Finding:
    """One check's verdict, printed as one line."""

    name: str
    level: Level
    detail: str

    def line(self) -> str:
        """``ok    postgres   …``: level, what was checked, what was found."""
        return f"{self.level:<5} {self.name:<9} {self.detail}"


def _reason(exc: BaseException) -> str:
    """The first line of an error, without the driver's hints and newlines."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    first = " ".join(text[0].split()) if text else type(cause).__name__
    return first[:200]


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Without ``logger``'s INFO lines (Alembic announces its dialect on every look)."""
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def database_revision(url: str, hint: str) -> str | None:
    """The database's Alembic revision (None if never migrated); StoreUnavailable if unreachable."""
    engine = create_engine(
        sqlalchemy_url(url),
        poolclass=NullPool,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )
    try:
        with engine.connect() as conn, _quiet(logging.getLogger("alembic.runtime.migration")):
            revision: str | None = MigrationContext.configure(conn).get_current_revision()
            return revision
    except SQLAlchemyError as exc:
        raise StoreUnavailable(
            f"Postgres at {hide_password(url)} is unreachable ({_reason(exc)}); {hint}"
        ) from exc
    finally:
        engine.dispose()


def require_migrated(url: str, hint: str) -> str:
    """The database's revision if it is the code's head, else StoreUnavailable saying so."""
    revision = database_revision(url, hint)
    head = head_revision()
    if revision != head:
        raise StoreUnavailable(
            f"Postgres at {hide_password(url)} is not migrated (at {revision or 'no revision'}, "
            f"this version needs {head}): run `pipeline db upgrade`"
        )
    return head


def ping_broker(url: str, hint: str) -> None:
    """Return once the broker answers; StoreUnavailable if it does not within a few seconds."""
    try:
        if is_redis(url):
            client = redis.Redis.from_url(
                redis_url(url),
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=CONNECT_TIMEOUT_S,
            )
            try:
                client.ping()
            finally:
                client.close()
        else:
            with Connection(url, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:  # redis, kombu and socket errors alike: all mean "cannot use it"
        raise StoreUnavailable(
            f"broker at {hide_password(url)} is unreachable ({_reason(exc)}); {hint}"
        ) from exc


def broker_persistence(url: str) -> Finding:
    """Whether the broker keeps what it acknowledged across a crash, and how."""
    name = "broker"
    if not is_redis(url):
        return Finding(name, "ok", f"{hide_password(url)} reachable (AMQP: durable queues)")
    client = redis.Redis.from_url(
        redis_url(url), socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S
    )
    where = hide_password(url)
    try:
        config = {**client.config_get("appendonly"), **client.config_get("appendfsync")}
        config |= client.config_get("save")
    except redis.RedisError as exc:
        return Finding(
            name, "warn", f"{where} reachable; persistence unknown (CONFIG GET: {_reason(exc)})"
        )
    finally:
        client.close()
    if config.get("appendonly") == "yes":
        fsync = config.get("appendfsync", "?")
        level: Level = "ok" if fsync in ("always", "everysec") else "warn"
        return Finding(name, level, f"{where} reachable; persistent: AOF on (appendfsync {fsync})")
    if config.get("save"):
        return Finding(
            name,
            "warn",
            f"{where} reachable; RDB snapshots only (save {config['save']!r}): a crash loses "
            "what arrived since the last snapshot; turn on appendonly",
        )
    return Finding(
        name,
        "FAIL",
        f"{where} reachable but not persistent (appendonly no, no RDB save): "
        "a restart loses every queued event; turn on appendonly",
    )
