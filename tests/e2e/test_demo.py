"""`pipeline demo` on embedded defaults: the seed scenarios go through and the summary adds up."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import embedded_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_demo_relays_every_message_in_order_and_exits_zero(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "home")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "demo",
            "--count",
            "20",
            "--rate",
            "40",
            "--receiver-port",
            "38000",
            "--momento-port",
            "38080",
            "--flower-port",
            "35555",
            "--workers",
            "1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    published = int(re.search(r"events published\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    stored = int(re.search(r"events stored\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    assert published == stored > 20
    assert re.search(r"lost \(per sequencer\)\s+0\b", out)
    assert "relay in sequence order True (20/20)" in out
    assert re.search(r"received on demo/topic 2\s+20\b", out)
    assert re.search(r"received on fx/order-results\s+[1-9]", out)
    # Change records: the weather stations' table, its late MODIFY unable to resurrect Osaka.
    assert re.search(r"received on weather/station-changes\s+5:", out)
    assert re.search(r"cache station:Osaka\s+deleted", out)
    assert "never stale             True" in out
