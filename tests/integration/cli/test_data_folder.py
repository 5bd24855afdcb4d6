"""Commands run elsewhere follow the data-folder rule; read-only ones create nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import EMBEDDED_ENV_DROP
from tests.integration.cli.support import run_cli


@pytest.fixture
def elsewhere(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A directory outside any project, and an environment with nothing configured."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {name: "" for name in EMBEDDED_ENV_DROP if name != "PIPELINE_ROUTES"}
    return cwd, env | {"XDG_DATA_HOME": str(tmp_path / "xdg")}


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


@pytest.mark.parametrize("args", [["stats"], ["replay", "--dry-run"]], ids=" ".join)
def test_read_only_commands_outside_a_project_create_nothing_and_say_where_they_looked(
    tmp_path: Path, elsewhere: tuple[Path, dict[str, str]], args: list[str]
) -> None:
    cwd, env = elsewhere
    run = run_cli(*args, env=env, cwd=cwd)
    assert run.code == 1
    assert len(run.lines) == 1, run.lines
    home = tmp_path / "xdg" / "momento-pipeline"
    assert run.lines[0].startswith(f"error: no pipeline data at {home}:"), run.lines
    assert "PIPELINE_HOME" in run.lines[0]
    assert _files(tmp_path) == [cwd]  # no .pipeline/, no user data folder


def test_check_outside_a_project_creates_nothing(
    tmp_path: Path, elsewhere: tuple[Path, dict[str, str]]
) -> None:
    cwd, env = elsewhere
    run = run_cli("check", env=env | {"MOMENTO_LOCAL": "127.0.0.1:1"}, cwd=cwd)
    assert run.code == 1
    assert f"data folder {tmp_path / 'xdg' / 'momento-pipeline'}" in run.lines[0]
    assert any(line.startswith("FAIL  postgres") and "has no data" in line for line in run.lines)
    assert _files(tmp_path) == [cwd]


def test_a_subdirectory_of_a_project_uses_the_projects_data_folder(
    tmp_path: Path, elsewhere: tuple[Path, dict[str, str]]
) -> None:
    _, env = elsewhere
    project = tmp_path / "project"
    deep = project / "src" / "deeper"
    deep.mkdir(parents=True)
    (project / "routes.toml").write_text("# no routes yet\n")
    run = run_cli("check", env=env | {"MOMENTO_LOCAL": "127.0.0.1:1"}, cwd=deep)
    assert f"data folder {project / '.pipeline'}" in run.lines[0], run.lines
    stats = run_cli("stats", env=env, cwd=deep)
    assert len(stats.lines) == 1, stats.lines
    assert stats.lines[0].startswith(f"error: no pipeline data at {project / '.pipeline'}: ")
    assert not (project / ".pipeline").exists()
