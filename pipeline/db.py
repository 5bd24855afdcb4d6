"""Database engine and sessions, one engine per process and URL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from pipeline.config import Settings, get_settings
from pipeline.errors import ConfigError
from pipeline.services import EmbeddedPostgres

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def database_url(settings: Settings) -> str:
    """The configured DATABASE_URL, else the URL of the embedded Postgres under PIPELINE_HOME."""
    if settings.database_url:
        url = settings.database_url
        if url.startswith("postgres://"):
            url = "postgresql://" + url.removeprefix("postgres://")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        return url
    running = EmbeddedPostgres(settings.home).running_url()
    if running is None:
        raise ConfigError(
            "DATABASE_URL is unset and no embedded Postgres is running under "
            f"{settings.home}; set DATABASE_URL or start one with `pipeline up`"
        )
    return running


def get_engine(settings: Settings | None = None) -> Engine:
    """The process's engine for the configured database (created on first use)."""
    url = database_url(settings or get_settings())
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Close every pooled connection (after fork, and at shutdown)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


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
