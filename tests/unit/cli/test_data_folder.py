"""The data-folder rule: PIPELINE_HOME, else the nearest project upward, else the user's folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import find_home


def test_an_explicit_home_wins_and_is_made_absolute(tmp_path: Path) -> None:
    (tmp_path / "routes.toml").write_text("")
    assert find_home(Path("data"), cwd=tmp_path) == Path.cwd() / "data"
    assert find_home(tmp_path / "x", cwd=tmp_path) == tmp_path / "x"


def test_the_nearest_directory_with_a_data_folder_is_found_from_below(tmp_path: Path) -> None:
    (tmp_path / ".pipeline").mkdir()
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_home(cwd=deep) == tmp_path / ".pipeline"


def test_a_routes_file_marks_the_project_directory(tmp_path: Path) -> None:
    (tmp_path / ".pipeline").mkdir()
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "routes.toml").write_text("")
    assert find_home(cwd=project / "src") == project / ".pipeline"  # the nearer one


def test_outside_any_project_it_is_the_users_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    assert find_home(cwd=nowhere) == tmp_path / "xdg" / "momento-pipeline"
