"""Flower refuses anonymous requests on every path, and shows our queues to a logged-in user."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.config import Settings
from tests.conftest import wait_for

PASSWORD = "flower-test-password"
ROOT = Path(__file__).resolve().parents[3]
PATHS = ["/", "/workers", "/api/workers", "/api/tasks", "/broker", "/metrics", "/healthcheck"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _start(argv: list[str]) -> Iterator[str]:
    port = _free_port()
    env = dict(os.environ, FLOWER_PASSWORD=PASSWORD)
    process = subprocess.Popen([*argv, f"--port={port}"], env=env, cwd=ROOT, start_new_session=True)
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


@pytest.fixture(scope="module")
def flower_url(settings: Settings) -> Iterator[str]:
    with _start([sys.executable, "-m", "pipeline.cli", "flower"]) as url:
        yield url


@pytest.mark.parametrize("path", PATHS)
def test_anonymous_and_wrong_password_requests_are_refused(flower_url: str, path: str) -> None:
    assert httpx.get(f"{flower_url}{path}").status_code == 401
    wrong = httpx.get(f"{flower_url}{path}", auth=("admin", "guess"))
    assert wrong.status_code == 401


def test_metrics_and_healthcheck_answer_with_credentials(flower_url: str) -> None:
    metrics = httpx.get(f"{flower_url}/metrics", auth=("admin", PASSWORD))
    assert metrics.status_code == 200
    assert "# HELP" in metrics.text
    health = httpx.get(f"{flower_url}/healthcheck", auth=("admin", PASSWORD))
    assert (health.status_code, health.text) == (200, "OK")


def test_celery_flower_reads_flowerconfig_and_guards_every_path(settings: Settings) -> None:
    """`celery -A pipeline.celery_app flower` from the project directory, as Celery users run it."""
    celery = [sys.executable, "-m", "celery", "-A", "pipeline.celery_app", "flower"]
    with _start(celery) as url:
        for path in ("/metrics", "/healthcheck", "/api/workers"):
            assert httpx.get(f"{url}{path}").status_code == 401, path
        assert httpx.get(f"{url}/metrics", auth=("admin", PASSWORD)).status_code == 200


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
