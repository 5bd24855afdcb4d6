"""Settings: valid values load, invalid ones fail with one line naming variable, value and rule."""

from __future__ import annotations

import os

import pytest

from pipeline.config import load_settings
from pipeline.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting from the shell or from session fixtures (they export theirs) leaks in."""
    prefixes = ("PIPELINE_", "DATABASE_", "CELERY_", "MOMENTO_", "FLOWER_")
    for name in [n for n in os.environ if n.startswith(prefixes)]:
        monkeypatch.delenv(name)
    monkeypatch.chdir("/")  # no stray .env file


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (
            "PIPELINE_REPLAY_WINDOW_S",
            "-5",
            "greater than 0, got '-5'",
        ),
        (
            "PIPELINE_REPLAY_WINDOW_S",
            "soon",
            "PIPELINE_REPLAY_WINDOW_S Input should be a valid number",
        ),
        (
            "MOMENTO_LOCAL",
            "localhost",
            "MOMENTO_LOCAL must be host:port with a port in 1..65535, got 'localhost'",
        ),
        ("MOMENTO_LOCAL", "127.0.0.1:443", "MOMENTO_LOCAL port 443 makes the SDK use TLS"),
        (
            "DATABASE_URL",
            "mysql://x/y",
            "DATABASE_URL must be a postgresql://",
        ),
        ("CELERY_BROKER_URL", "sqs://", "CELERY_BROKER_URL must start with one of redis://"),
        (
            "PIPELINE_MAX_BODY_BYTES",
            "10",
            "PIPELINE_MAX_BODY_BYTES Input should be greater than or equal to 256",
        ),
        (
            "PIPELINE_BATCH_MAX_EVENTS",
            "0",
            "PIPELINE_BATCH_MAX_EVENTS Input should be greater than or equal to 1",
        ),
    ],
)
def test_invalid_value_names_variable_value_and_rule(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_secrets_are_split_on_commas_and_blanks_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PIPELINE_WEBHOOK_SECRETS", "old-secret, new-secret,,")
    assert load_settings().pipeline_webhook_secrets == ["old-secret", "new-secret"]


def test_defaults_match_the_design_contract() -> None:
    settings = load_settings()
    assert settings.pipeline_replay_window_s == 60
    assert str(settings.pipeline_routes) == "routes.toml"
    assert settings.database_url is None
    assert settings.celery_broker_url is None


def test_dotenv_file_is_read(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / ".env").write_text("PIPELINE_REPLAY_WINDOW_S=12\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().pipeline_replay_window_s == 12
