"""`pipeline check`: one line per check; a good set-up passes, each broken part fails its line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli.migrate import head_revision
from pipeline.config import Settings
from pipeline.emulator import EmulatorServer
from tests.integration.cli.support import Run, free_port, run_cli
from tests.integration.cli.test_store_errors import unmigrated_url  # noqa: F401 (a fixture)

ROUTES = Path(__file__).resolve().parents[3] / "routes.toml"
NAMES = ["settings", "postgres", "broker", "momento", "webhooks", "routes"]


@pytest.fixture(scope="module")
def momento_local() -> Iterator[str]:
    """A local Momento server on a free port."""
    server = EmulatorServer(port=0, admin_port=None).start()
    yield server.address
    server.stop()


@pytest.fixture
def good_env(settings: Settings, momento_local: str) -> dict[str, str]:
    """The test session's stores, the local server, the sample routes."""
    return {"MOMENTO_LOCAL": momento_local, "PIPELINE_ROUTES": str(ROUTES)}


def verdicts(run: Run) -> dict[str, tuple[str, str]]:
    """{check name: (level, detail)} from check's stdout."""
    found = {}
    for line in run.stdout.splitlines():
        level, name, detail = line.split(None, 2)
        found[name] = (level, detail)
    return found


def test_a_good_set_up_passes_every_check(good_env: dict[str, str]) -> None:
    run = run_cli("check", env=good_env)
    assert run.code == 0, run.lines
    found = verdicts(run)
    assert list(found) == NAMES
    assert all(level == "ok" for level, _ in found.values()), found
    assert f"migrated (at {head_revision()})" in found["postgres"][1]
    assert "AOF on (appendfsync always)" in found["broker"][1]
    assert f"local server at {good_env['MOMENTO_LOCAL']}" in found["momento"][1]
    assert "5 routes, 1 subscribed topic(s)" in found["routes"][1]


def test_an_unreachable_database_fails_the_postgres_line(good_env: dict[str, str]) -> None:
    url = f"postgresql://nobody:hunter2@127.0.0.1:{free_port()}/none"
    run = run_cli("check", env=good_env | {"DATABASE_URL": url})
    assert run.code == 1
    found = verdicts(run)
    assert found["postgres"][0] == "FAIL"
    assert "postgresql://nobody:***@" in found["postgres"][1]
    assert "unreachable" in found["postgres"][1]
    assert "hunter2" not in run.stdout + run.stderr
    assert found["broker"][0] == "ok"  # the others are still checked


def test_an_unmigrated_database_fails_the_postgres_line(
    good_env: dict[str, str],
    unmigrated_url: str,  # noqa: F811
) -> None:
    run = run_cli("check", env=good_env | {"DATABASE_URL": unmigrated_url})
    assert run.code == 1
    level, detail = verdicts(run)["postgres"]
    assert level == "FAIL"
    assert "not migrated" in detail
    assert "pipeline db upgrade" in detail


def test_an_unreachable_broker_fails_the_broker_line(good_env: dict[str, str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    run = run_cli("check", env=good_env | {"CELERY_BROKER_URL": url})
    assert run.code == 1
    level, detail = verdicts(run)["broker"]
    assert level == "FAIL"
    assert "unreachable" in detail


def test_a_bad_routes_file_fails_the_routes_line(good_env: dict[str, str], tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\nname = "x"\ncache = "c"\n')
    run = run_cli("check", env=good_env | {"PIPELINE_ROUTES": str(routes)})
    assert run.code == 1
    level, detail = verdicts(run)["routes"]
    assert level == "FAIL"
    assert str(routes) in detail


def test_an_unreachable_local_server_fails_the_momento_line(good_env: dict[str, str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    run = run_cli("check", env=good_env | {"MOMENTO_LOCAL": address})
    assert run.code == 1
    level, detail = verdicts(run)["momento"]
    assert level == "FAIL"
    assert address in detail
    assert "Connection refused" in detail


def test_a_bad_api_key_without_a_webhook_secret_fails_momento_and_webhooks(
    good_env: dict[str, str],
) -> None:
    env = good_env | {"MOMENTO_LOCAL": "", "MOMENTO_API_KEY": "not-a-real-key"}
    run = run_cli("check", env=env | {"PIPELINE_WEBHOOK_SECRETS": ""})
    assert run.code == 1
    found = verdicts(run)
    assert found["momento"][0] == "FAIL"
    assert "MOMENTO_API_KEY is not usable" in found["momento"][1]
    assert found["webhooks"][0] == "FAIL"
    assert "PIPELINE_WEBHOOK_SECRETS is empty" in found["webhooks"][1]
    assert "uppercase" in found["webhooks"][1]  # a route that webhooks feed
    assert "weather" not in found["webhooks"][1]  # fed by subscription


def test_invalid_settings_are_the_only_line(good_env: dict[str, str]) -> None:
    run = run_cli("check", env=good_env | {"PIPELINE_REPLAY_WINDOW_S": "-5"})
    assert run.code == 1
    found = verdicts(run)
    assert list(found) == ["settings"]
    assert "PIPELINE_REPLAY_WINDOW_S" in found["settings"][1]
