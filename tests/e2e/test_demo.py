"""`pipeline demo` on embedded defaults: the seed scenarios go through and the summary adds up.

The demo runs twice on the same data folder: the second summary counts the second run only.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import embedded_env

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _demo(home: Path, count: int, *, flower: bool) -> str:
    """One `pipeline demo` on free ports (other suites may run demos beside this one)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "demo",
            "--count",
            str(count),
            "--rate",
            "40",
            "--receiver-port",
            str(_free_port()),
            "--momento-port",
            str(_free_port()),
            "--flower-port",
            str(_free_port()),
            "--workers",
            "1",
            "--flower" if flower else "--no-flower",
        ],
        cwd=ROOT,
        env=embedded_env(home),
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    return out


def _value(out: str, label: str) -> int:
    found = re.search(rf"^  {re.escape(label)}\s+(\d+)\b", out, re.MULTILINE)
    assert found, f"no {label!r} in:\n{out}"
    return int(found.group(1))


def _check_run(out: str, count: int) -> int:
    published = _value(out, "events published")
    assert _value(out, "events stored") == published > count
    assert _value(out, "  by webhook") + _value(out, "  by subscription") == published
    assert _value(out, "lost (per sequencer)") == 0
    assert re.search(rf"relay in sequence order\s+True \({count}/{count}\)", out)
    assert _value(out, "received on demo/topic 2") == count
    assert _value(out, "received on fx/order-results") >= 1
    # Change records: the weather stations' table, its late MODIFY unable to resurrect Osaka.
    assert re.search(r"received on weather/station-changes\s+5:", out)
    assert re.search(r"cache station:Osaka\s+deleted", out)
    assert re.search(r"never stale\s+True", out)
    return published


def _value_columns(out: str) -> list[set[int]]:
    """Per summary section (the demo's, the change records'): where each line's value starts
    (after its label and at least two spaces)."""
    sections = out.split("demo summary", 1)[1].strip("\n").split("\n\n")
    columns = []
    for section in sections:
        lines = section.splitlines()[1:]  # after the section's title
        found = [re.match(r"^  ( *\S+(?: \S+)*)\s{2,}", line) for line in lines]
        assert lines, out
        assert all(found), out
        columns.append({match.end() for match in found if match})
    return columns


@pytest.mark.timeout(420)
def test_demo_counts_each_run_on_its_own_data_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first_out = _demo(home, 20, flower=True)
    first = _check_run(first_out, 20)
    second_out = _demo(home, 8, flower=False)
    second = _check_run(second_out, 8)
    # counted over the whole table, the rerun would report both runs' events and outbox rows
    assert second < first
    assert _value(second_out, "outbox rows sent") < _value(first_out, "outbox rows sent")
    for columns in (_value_columns(first_out), _value_columns(second_out)):
        assert [len(found) for found in columns] == [1, 1], second_out  # each section aligned
