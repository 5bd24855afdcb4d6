"""Flower refuses anonymous requests to its UI and API, and shows our queues to a logged-in user."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from pipeline.config import Settings
from tests.conftest import wait_for

PASSWORD = "flower-test-password"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def flower_url(settings: Settings) -> Iterator[str]:
    port = _free_port()
    env = dict(os.environ, FLOWER_PASSWORD=PASSWORD)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "flower", "--port", str(port)],
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, f"flower exited with {process.returncode}"
        try:
            httpx.get(f"{url}/healthcheck", timeout=1)
        except httpx.HTTPError:
            return False
        return True

    try:
        assert wait_for(up, 30, 0.2), "flower did not start"
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)


@pytest.mark.parametrize("path", ["/", "/workers", "/api/workers", "/api/tasks", "/broker"])
def test_anonymous_and_wrong_password_requests_are_refused(flower_url: str, path: str) -> None:
    assert httpx.get(f"{flower_url}{path}").status_code == 401
    wrong = httpx.get(f"{flower_url}{path}", auth=("admin", "guess"))
    assert wrong.status_code == 401


def test_authenticated_user_sees_the_pipeline_queues(flower_url: str) -> None:
    response = httpx.get(f"{flower_url}/broker", auth=("admin", PASSWORD))
    assert response.status_code == 200
    for queue in ("ingest", "workflows", "publish", "aggregate"):
        assert queue in response.text
    api = httpx.get(f"{flower_url}/api/workers", auth=("admin", PASSWORD))
    assert api.status_code == 200


def test_generated_password_is_kept_private_and_stable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pipeline.cli.flower import flower_password

    settings = Settings(pipeline_home=tmp_path)
    first = flower_password(settings)
    assert len(first) >= 20
    assert flower_password(settings) == first
    assert (tmp_path / "flower-password").stat().st_mode & 0o077 == 0
