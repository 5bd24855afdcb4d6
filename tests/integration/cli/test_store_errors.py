"""An unreachable or unmigrated store: one line naming it, its URL (password hidden) and what to
do, a non-zero exit, within a few seconds, for every command that opens a store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from pipeline.config import Settings
from pipeline.stores import sqlalchemy_url
from tests.integration.cli.support import free_port, run_cli

BOUND_S = 10.0  # imports take ~2 s of it on a loaded 2-core box; the probes give up after 3 s

DATABASE_COMMANDS = [
    ["db", "upgrade"],
    ["db", "downgrade", "base"],
    ["stats"],
    ["replay", "--dry-run"],
    ["replay"],
    ["worker"],
    ["listen"],
    ["dashboard", "--port", "1"],
]  # not the receiver: it needs only the broker, and must take webhooks while Postgres is down
BROKER_COMMANDS = [
    ["replay"],
    ["worker"],
    ["beat"],
    ["flower", "--port", "1"],
    ["listen"],
    ["receiver", "--port", "1"],
    ["dashboard", "--port", "1"],
]


def one_line_failure(args: list[str], variable: str, url: str, starts: str) -> None:
    """``args`` with ``variable`` at an unreachable ``url``: one line naming the store (password
    hidden) and the variable to fix, a non-zero exit, within ``BOUND_S``."""
    run = run_cli(*args, env={variable: url})
    assert run.code != 0
    assert len(run.lines) == 1, run.lines
    (line,) = run.lines
    assert line.startswith(f"{starts}127.0.0.1:"), line
    assert "unreachable" in line
    assert f"fix {variable}" in line
    assert "hunter2" not in line
    assert run.elapsed_s < BOUND_S


@pytest.mark.parametrize("args", DATABASE_COMMANDS, ids=" ".join)
def test_unreachable_postgres_is_one_line_and_a_fast_failure(
    settings: Settings, args: list[str]
) -> None:
    url = f"postgresql://nobody:hunter2@127.0.0.1:{free_port()}/none"
    one_line_failure(args, "DATABASE_URL", url, "error: Postgres at postgresql://nobody:***@")


@pytest.mark.parametrize("args", BROKER_COMMANDS, ids=" ".join)
def test_unreachable_broker_is_one_line_and_a_fast_failure(
    settings: Settings, args: list[str]
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    one_line_failure(args, "CELERY_BROKER_URL", url, "error: broker at redis://:***@")


@pytest.fixture
def unmigrated_url(settings: Settings) -> Iterator[str]:
    """An empty database on the session's Postgres server."""
    assert settings.database_url
    admin = create_engine(sqlalchemy_url(settings.database_url), isolation_level="AUTOCOMMIT")
    name = "unmigrated_cli"
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    base = admin.url.set(database=name)
    try:
        yield base.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.mark.parametrize("args", [["stats"], ["replay", "--dry-run"], ["worker"]], ids=" ".join)
def test_an_unmigrated_database_says_run_db_upgrade(unmigrated_url: str, args: list[str]) -> None:
    run = run_cli(*args, env={"DATABASE_URL": unmigrated_url})
    assert run.code != 0
    assert len(run.lines) == 1, run.lines
    assert "is not migrated (at no revision" in run.lines[0]
    assert "run `pipeline db upgrade`" in run.lines[0]
    assert run.elapsed_s < BOUND_S


def test_db_upgrade_then_migrates_it(unmigrated_url: str) -> None:
    upgraded = run_cli("db", "upgrade", env={"DATABASE_URL": unmigrated_url})
    assert upgraded.code == 0, upgraded.lines
    stats = run_cli("stats", "--no-refresh", env={"DATABASE_URL": unmigrated_url})
    assert stats.code == 0, stats.lines
