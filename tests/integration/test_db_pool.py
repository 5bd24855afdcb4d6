"""Pooled connections: idle ones are checked before use, recently used ones are not pinged."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError

from pipeline.config import Settings
from pipeline.db import ping_when_idle
from pipeline.stores import database_url


@contextmanager
def backend_killed_while_idle(
    settings: Settings, idle_s: float
) -> Iterator[tuple[Engine, list[str]]]:
    """An engine whose one pooled connection's server process was terminated while idle."""
    engine = create_engine(database_url(settings), pool_size=1, max_overflow=0)
    admin = create_engine(database_url(settings))
    ping_when_idle(engine, idle_s=idle_s)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        statements.clear()
        yield engine, statements
    finally:
        engine.dispose()
        admin.dispose()


def test_a_connection_that_died_while_idle_is_replaced_before_use(settings: Settings) -> None:
    with backend_killed_while_idle(settings, idle_s=0.0) as (engine, statements):
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 42")).scalar() == 42
        assert "SELECT 42" in statements


def test_a_recently_used_connection_is_not_pinged(settings: Settings) -> None:
    with backend_killed_while_idle(settings, idle_s=3600.0) as (engine, statements):
        with pytest.raises(OperationalError), engine.connect() as conn:
            conn.execute(text("SELECT 42"))  # no ping first: the dead connection fails
        assert statements == ["SELECT 42"]
        with engine.connect() as conn:  # the pool replaced it
            assert conn.execute(text("SELECT 42")).scalar() == 42
