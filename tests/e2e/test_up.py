"""`pipeline up` on embedded defaults: all starts, a webhook is stored, Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from celery import Celery
from sqlalchemy import create_engine, text

from pipeline.ingest.signing import sign
from tests.conftest import embedded_env, wait_for


@pytest.mark.timeout(240)
def test_up_runs_everything_embedded_and_stops_without_orphans(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "home")
    ports = {
        "--receiver-port": "18000",
        "--momento-port": "18080",
        "--flower-port": "15555",
        "--dashboard-port": "18050",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "up",
            "--workers",
            "1",
            *[item for pair in ports.items() for item in pair],
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        receiver = None
        while time.monotonic() < deadline and "Ctrl-C" not in "".join(lines[-3:]):
            line = process.stdout.readline()
            assert line, "pipeline up exited early:\n" + "".join(lines[-40:])
            lines.append(line)
            if line.startswith("receiver "):
                receiver = line.split()[1]
        assert receiver, "".join(lines[-40:])
        assert any(line.startswith("flower ") and "login admin / " in line for line in lines)
        momento = next(line for line in lines if line.startswith("momento "))
        admin = momento.split("(admin ")[1].split(",")[0]
        http_api = momento.split("HTTP API ")[1].split(")")[0]
        assert httpx.post(f"{admin}/caches/up-http", timeout=5).status_code == 201
        put = httpx.put(
            f"{http_api}/cache/up-http?key=k&ttl_seconds=60",
            headers={"Authorization": "any"},
            content=b"v",
            timeout=5,
        )
        assert put.status_code == 204, put.text
        got = httpx.get(f"{http_api}/cache/up-http?key=k&token=any", timeout=5)
        assert got.content == b"v"
        dashboard = next(line.split() for line in lines if line.startswith("dashboard "))
        assert dashboard[2:4] == ["login", "admin"], dashboard
        assert httpx.get(dashboard[1]).status_code == 401
        assert httpx.get(dashboard[1], auth=("admin", dashboard[5])).status_code == 200
        children = psutil.Process(process.pid).children(recursive=True)
        assert len(children) >= 6  # momento-local, receiver, worker, beat, flower, dashboard, …
        broker = next(line.split()[1] for line in lines if line.startswith("broker "))
        probe = Celery("probe")
        # Celery prefers $CELERY_BROKER_URL (the test session's broker) to an argument.
        probe.conf.broker_read_url = probe.conf.broker_write_url = broker
        try:  # `up` reports ready only once its workers consume
            replies = probe.control.ping(timeout=1.0)
        finally:
            probe.close()
        assert any(name.startswith("worker1@") for reply in replies for name in reply), replies

        secret = (tmp_path / "home" / "webhook-secret").read_text().strip()
        now = int(time.time() * 1000)
        body = json.dumps(
            {
                "cache": "demo",
                "topic": "t",
                "event_timestamp": now,
                "publish_timestamp": now,
                "topic_sequence_number": 1,
                "token_id": "",
                "text": "hello",
            }
        ).encode()
        response = httpx.post(
            receiver,
            content=body,
            headers={"content-type": "application/json", "momento-signature": sign(body, secret)},
        )
        assert response.status_code == 204, response.text

        url = json.loads((tmp_path / "home" / "postgres.json").read_text())["url"]
        engine = create_engine(url)
        try:

            def stored() -> bool:
                with engine.connect() as conn:
                    return conn.execute(text("SELECT count(*) FROM events")).scalar_one() == 1

            assert wait_for(stored, 30, 0.2)
        finally:
            engine.dispose()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(90)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            if process.stdout is not None:
                process.stdout.close()
    assert code == 0, "".join(lines[-40:])
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"orphans left running: {alive}"
