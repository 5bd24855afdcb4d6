"""`pipeline up` on embedded defaults: everything starts and answers, the console stays quiet (logs
in files), one stack per data folder, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from pipeline.ingest.signing import sign
from tests.conftest import embedded_env, wait_for
from tests.integration.cli.support import free_port

ROUTES = Path(__file__).resolve().parents[2] / "routes.toml"
IDLE_S = 12.0  # longer than one throughput interval (10 s)


def _up_argv() -> list[str]:
    ports = ("--receiver-port", "--momento-port", "--flower-port", "--dashboard-port")
    pairs = [item for name in ports for item in (name, str(free_port()))]
    return [sys.executable, "-m", "pipeline.cli", "up", "--workers", "1", *pairs]


class Console:
    """A `pipeline up` process and every line it printed, with when."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            _up_argv(), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, text=True,
        )  # fmt: skip
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def text(self) -> list[str]:
        return [line for _, line in self.lines]

    def ready(self) -> bool:
        assert self.process.poll() is None, "up exited:\n" + "\n".join(self.text()[-40:])
        return any("Ctrl-C" in line for line in self.text())

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(90)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
            self.reader.join(5)
            if self.process.stdout is not None:
                self.process.stdout.close()


@pytest.mark.timeout(300)
def test_up_runs_everything_quietly_a_second_up_is_refused_and_stop_leaves_nothing(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    first = Console(tmp_path, embedded_env(home))
    try:
        assert wait_for(first.ready, 150, 0.2), "\n".join(first.text()[-40:])
        block = first.text()
        assert len(block) <= 10, block  # the status block, not the children's banners
        receiver = next(line.split()[1] for line in block if line.startswith("receiver "))
        flower = next(line.split()[1] for line in block if line.startswith("flower "))
        assert f"logs       {home / 'logs'}/" in block

        second = subprocess.run(
            _up_argv(), cwd=tmp_path, env=embedded_env(home), capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert second.returncode == 1
        said = [line for line in (second.stdout + second.stderr).splitlines() if line.strip()]
        assert len(said) == 1, said
        assert f"already running on the data folder {home}" in said[0]
        assert receiver in said[0]
        assert flower in said[0]
        assert "login" not in said[0]  # the Flower password stays in the first console

        quiet_from = time.monotonic()
        time.sleep(IDLE_S)
        idle = [line for at, line in first.lines if at >= quiet_from]
        assert idle == [], idle

        check = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "check"], cwd=tmp_path, env=embedded_env(home),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        levels = [line.split()[0] for line in check.stdout.splitlines()]
        assert levels == ["ok"] * 6, check.stdout
        assert "started by the running `pipeline up`" in check.stdout

        # What `up` started answers: the local server's HTTP API, the dashboard behind its login.
        momento = next(line for line in block if line.startswith("momento "))
        admin = momento.split("(admin ")[1].split(",")[0]
        http_api = momento.split("HTTP API ")[1].split(")")[0]
        assert httpx.post(f"{admin}/caches/up-http", timeout=5).status_code == 201
        put = httpx.put(
            f"{http_api}/cache/up-http?key=k&ttl_seconds=60",
            headers={"Authorization": "any"}, content=b"v", timeout=5,
        )  # fmt: skip
        assert put.status_code == 204, put.text
        assert httpx.get(f"{http_api}/cache/up-http?key=k&token=any", timeout=5).content == b"v"
        dashboard = next(line.split() for line in block if line.startswith("dashboard "))
        assert dashboard[2:4] == ["login", "admin"], dashboard
        assert httpx.get(dashboard[1]).status_code == 401
        assert httpx.get(dashboard[1], auth=("admin", dashboard[5])).status_code == 200
        children = psutil.Process(first.process.pid).children(recursive=True)
        assert len(children) >= 6  # momento-local, receiver, worker, beat, flower, dashboard, …

        assert (home / "logs" / "dashboard.log").exists()  # it logs warnings only
        for name in ("worker-1", "beat", "receiver", "flower", "momento-local"):
            assert (home / "logs" / f"{name}.log").stat().st_size > 0, name
        worker_log = (home / "logs" / "worker-1.log").read_text()
        assert "celery@" in worker_log or "worker1@" in worker_log

        secret = (home / "webhook-secret").read_text().strip()
        now = int(time.time() * 1000)
        body = json.dumps({
            "cache": "demo", "topic": "t", "event_timestamp": now, "publish_timestamp": now,
            "topic_sequence_number": 1, "token_id": "", "text": "hello",
        }).encode()  # fmt: skip
        headers = {"content-type": "application/json", "momento-signature": sign(body, secret)}
        assert httpx.post(receiver, content=body, headers=headers).status_code == 204

        def throughput() -> bool:
            return any(line.startswith("throughput  events stored") for line in first.text())

        assert wait_for(throughput, 25, 0.5), first.text()[-10:]
    finally:
        code = first.stop()
    assert code == 0, "\n".join(first.text()[-40:])
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"orphans left running: {alive}"


def test_up_with_a_real_key_and_no_webhook_secret_refuses_before_starting(
    tmp_path: Path,
) -> None:
    shutil.copy(ROUTES, tmp_path / "routes.toml")
    env = embedded_env(tmp_path / "home") | {"MOMENTO_API_KEY": "not-a-real-key"}
    started = time.monotonic()
    done = subprocess.run(
        _up_argv(), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert time.monotonic() - started < 30
    said = done.stdout + done.stderr
    assert "FAIL  webhooks" in said
    assert "PIPELINE_WEBHOOK_SECRETS is empty" in said
    assert "FAIL  momento" in said
    assert not (tmp_path / "home").exists()  # nothing started, no secret generated


def test_up_with_an_unreachable_configured_database_refuses_in_one_line(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "home")
    env["DATABASE_URL"] = f"postgresql://nobody:hunter2@127.0.0.1:{free_port()}/none"
    started = time.monotonic()
    done = subprocess.run(
        _up_argv(), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert time.monotonic() - started < 15
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(said) == 1, said
    expected = "FAIL  postgres  Postgres at postgresql://nobody:***@127.0.0.1:"
    assert said[0].startswith(expected), said
    assert not (tmp_path / "home").exists()
