"""Migrations go up, down and up again, and agree with the models (alembic check)."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import inspect

from pipeline.cli import migrate
from pipeline.config import Settings
from pipeline.db import get_engine


def test_upgrade_downgrade_upgrade_and_models_match(settings: Settings) -> None:
    migrate.downgrade(settings, "base")
    assert "events" not in inspect(get_engine(settings)).get_table_names()
    migrate.upgrade(settings)
    assert {"events", "dead_letters"} <= set(inspect(get_engine(settings)).get_table_names())
    migrate.check(settings)  # raises if models and migrations disagree


def test_alembic_cli_reads_the_same_settings(settings: Settings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "current"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "(head)" in result.stdout


def test_pipeline_db_upgrade_command_is_idempotent(settings: Settings) -> None:
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "db", "upgrade"],
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "database at head" in result.stdout
