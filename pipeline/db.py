"""Database engine and sessions, one engine per process and URL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.orm import Session, sessionmaker

from pipeline.config import Settings, get_settings
from pipeline.stores import database_url

_engines: dict[str, Engine] = {}
_lock = threading.Lock()

CONNECT_TIMEOUT_S = 5
"""A database that does not answer a new connection within this long counts as down."""

IDLE_PING_S = 1.0
"""A pooled connection idle for longer is pinged before use (see ``ping_when_idle``): under load
connections are reused within milliseconds and never pinged; at low rates the ping costs nothing
that matters."""


def get_engine(settings: Settings | None = None) -> Engine:
    """The process's engine for the configured database (created on first use)."""
    url = database_url(settings or get_settings())
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(
                url,
                pool_size=5,
                max_overflow=5,
                connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
            )
            ping_when_idle(engine)
            _engines[url] = engine
        return engine


def ping_when_idle(engine: Engine, idle_s: float = IDLE_PING_S) -> None:
    """Check a pooled connection before use only if it sat idle for ``idle_s``.

    ``pool_pre_ping`` pings on every checkout: a round trip per transaction, two per ingest batch
    on the hot path. Connections that just served a task are alive; those that sat idle (across a
    database restart, or past a proxy's idle timeout) are the ones to check. A failed ping makes
    the pool replace the connection (SQLAlchemy's pessimistic disconnect handling); a connection
    that dies while busy fails its statement, and the task's retry gets a fresh one.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)  # what pool_pre_ping runs
        except Exception as error:  # any failure: let the pool connect afresh
            raise exc.DisconnectionError(f"idle connection failed its ping: {error}") from error


def dispose_engines() -> None:
    """Close every pooled connection (after fork, and at shutdown)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


Executor: TypeAlias = Connection | Session
"""What runs statements in a transaction: a Core connection (hot paths: no ORM cost) or a
session."""


@contextmanager
def transaction(settings: Settings | None = None) -> Iterator[Connection]:
    """A Core connection in one transaction: committed on success, rolled back on any error.

    For statement-only work such as storing a batch: it costs ~0.3 ms less CPU per transaction
    than a session, measured storing batches of three events.
    """
    with get_engine(settings).begin() as conn:
        yield conn


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any error."""
    factory = sessionmaker(get_engine(settings), expire_on_commit=False)
    with factory() as session, session.begin():
        yield session


def ping(settings: Settings | None = None) -> None:
    """Raise if the database cannot run a trivial query."""
    with get_engine(settings).connect() as conn:
        conn.execute(text("SELECT 1"))
