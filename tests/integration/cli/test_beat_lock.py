"""Never two beats on one broker: a second `pipeline beat` is refused while the first runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import redis

from pipeline.cli.beat_lock import KEY, TTL_S
from pipeline.config import Settings
from tests.conftest import wait_for
from tests.integration.cli.support import run_cli


def _beat() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "beat", "-l", "WARNING"],
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes]) -> int:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def test_a_second_beat_is_refused_and_starts_once_the_first_stops(settings: Settings) -> None:
    assert settings.celery_broker_url
    client = redis.Redis.from_url(settings.celery_broker_url)
    first = _beat()
    try:
        assert wait_for(lambda: client.get(KEY) is not None, 30, 0.2), "the first beat took no lock"
        holder = client.get(KEY)
        assert holder is not None
        assert f":{first.pid}:" in holder.decode()

        second = run_cli("beat", timeout_s=TTL_S + 40)
        assert second.code == 1
        assert len(second.lines) == 1, second.lines
        assert "another beat runs on the broker" in second.lines[0]
        assert f":{first.pid}:" in second.lines[0]
        assert first.poll() is None  # the first one runs on, unharmed
    finally:
        assert _stop(first) in (0, -signal.SIGTERM)
    assert client.get(KEY) is None  # released on a clean stop, not left to expire

    third = _beat()
    try:

        def third_holds() -> bool:
            return f":{third.pid}:" in (client.get(KEY) or b"").decode()

        assert wait_for(third_holds, 30, 0.2)
    finally:
        _stop(third)
        client.close()
