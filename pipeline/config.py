"""Settings: the only reader of the environment (and of a ``.env`` file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import platformdirs
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.errors import ConfigError


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the pipeline; field names are the environment variable names."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    database_url: str | None = None
    celery_broker_url: str | None = None

    momento_api_key: SecretStr | None = None
    momento_endpoint: str | None = None
    momento_local: str | None = None

    pipeline_home: Path | None = None
    pipeline_webhook_secrets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    pipeline_change_api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    pipeline_change_api_key_header: str = Field(default="x-api-key", pattern=r"^[A-Za-z0-9-]+$")
    pipeline_change_basic_auth: Annotated[list[str], NoDecode] = Field(default_factory=list)
    pipeline_change_max_body_bytes: int = Field(default=1024 * 1024, ge=256, le=16 * 1024 * 1024)
    pipeline_replay_window_s: float = Field(default=60.0, gt=0)
    pipeline_future_skew_s: float = Field(default=30.0, ge=0)
    pipeline_routes: Path = Path("routes.toml")
    pipeline_max_body_bytes: int = Field(default=65536, ge=256, le=16 * 1024 * 1024)
    pipeline_batch_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    pipeline_batch_max_wait_ms: float = Field(default=20.0, ge=0, le=1000)
    pipeline_batch_interval_ms: float = Field(default=8.0, ge=0, le=1000)
    pipeline_batch_backlog_wait_ms: float = Field(default=250.0, ge=0, le=2000)
    pipeline_batch_max_events: int = Field(default=500, ge=1, le=10000)
    pipeline_max_pending_events: int = Field(default=20000, ge=1)
    pipeline_enqueue_timeout_s: float = Field(default=3.0, gt=0, le=4.5)
    pipeline_visibility_timeout_s: int = Field(default=30, ge=10)
    pipeline_ingest_task_events: bool = False
    pipeline_reorder_window_s: float = Field(default=2.0, ge=0)
    pipeline_backlog_hold_s: float = Field(default=0.0, ge=0)
    pipeline_reset_idle_s: float = Field(default=1.0, gt=0)
    pipeline_rollup_window_s: int = Field(default=60, ge=1)
    pipeline_retention_days: float = Field(default=7.0, gt=0)
    pipeline_publish_rate_per_s: float = Field(default=100.0, gt=0)
    pipeline_publish_burst: float | None = Field(default=None, ge=1)
    pipeline_publish_max_attempts: int = Field(default=8, ge=1)
    pipeline_publish_backoff_max_s: float = Field(default=60.0, gt=0)
    pipeline_outbox_drain_s: float = Field(default=1.0, gt=0)
    pipeline_workflow_max_attempts: int = Field(default=5, ge=1)
    pipeline_workflow_stall_s: float = Field(default=120.0, gt=0)
    pipeline_summary_topic: str | None = None
    pipeline_summary_cache: str | None = None

    flower_user: str = "admin"
    flower_password: SecretStr | None = None

    @field_validator(
        "pipeline_webhook_secrets",
        "pipeline_change_api_keys",
        "pipeline_change_basic_auth",
        mode="before",
    )
    @classmethod
    def _secrets_from_csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("pipeline_home", mode="before")
    @classmethod
    def _empty_home_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("pipeline_change_basic_auth")
    @classmethod
    def _user_colon_password(cls, value: list[str]) -> list[str]:
        if any(":" not in pair or pair.startswith(":") for pair in value):
            raise ValueError("must be comma-separated user:password pairs")
        return value

    @field_validator("momento_local")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port with a port in 1..65535")
        if int(port) == 443:
            raise ValueError("port 443 makes the SDK use TLS; pick another port")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value and not value.startswith(("postgresql", "postgres://")):
            raise ValueError("must be a postgresql:// (or postgresql+psycopg://) URL")
        return value

    @field_validator("celery_broker_url")
    @classmethod
    def _broker_scheme(cls, value: str | None) -> str | None:
        allowed = ("redis://", "rediss://", "redis+socket://", "amqp://", "amqps://", "pyamqp://")
        if value and not value.startswith(allowed):
            raise ValueError(f"must start with one of {', '.join(allowed)}")
        return value

    @property
    def home(self) -> Path:
        """Absolute data folder for embedded services' data and state (see ``find_home``)."""
        return find_home(self.pipeline_home)


HOME_DIR = ".pipeline"
PROJECT_MARKER = "routes.toml"


def find_home(explicit: Path | None = None, cwd: Path | None = None) -> Path:
    """The data folder, by one rule that gives the same answer from any directory:

    1. ``PIPELINE_HOME`` when set (a relative path is taken from the current directory);
    2. else the ``.pipeline/`` folder of the nearest directory, from the current one upward,
       that holds a ``.pipeline/`` folder or a ``routes.toml`` (a pipeline project);
    3. else the per-user data folder (``platformdirs.user_data_dir("momento-pipeline")``,
       e.g. ``~/.local/share/momento-pipeline`` on Linux).
    """
    if explicit is not None:
        return explicit.expanduser().resolve()
    here = (cwd or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / HOME_DIR).is_dir() or (directory / PROJECT_MARKER).is_file():
            return directory / HOME_DIR
    return Path(platformdirs.user_data_dir("momento-pipeline", appauthor=False))


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning a validation failure into one clear ConfigError line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]).upper() if err["loc"] else "settings"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{name} {message}, got {err.get('input')!r}")
    return "; ".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide Settings, read once."""
    return load_settings()
