"""Run Alembic migrations from code (`pipeline db upgrade`, `pipeline up`, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from pipeline.config import Settings
from pipeline.db import get_engine

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(settings: Settings) -> Config:
    """An Alembic Config pointing at this project's migrations and ``settings``' database."""
    ini = ROOT / "alembic.ini"
    cfg = Config(str(ini)) if ini.exists() else Config()
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["configure_logger"] = False
    cfg.attributes["settings"] = settings
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Migrate the database up to ``revision``; concurrent callers serialize on an advisory lock."""
    cfg = alembic_config(settings)
    with get_engine(settings).begin() as conn:
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(settings: Settings, revision: str) -> None:
    """Migrate the database down to ``revision``."""
    cfg = alembic_config(settings)
    with get_engine(settings).begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def check(settings: Settings) -> None:
    """Raise if the models and the migrations disagree (``alembic check``)."""
    cfg = alembic_config(settings)
    with get_engine(settings).begin() as conn:
        cfg.attributes["connection"] = conn
        command.check(cfg)


def head_revision() -> str:
    """The newest migration this version of the code ships."""
    script = ScriptDirectory(str(ROOT / "migrations"))
    head = script.get_current_head()
    assert head is not None
    return head
