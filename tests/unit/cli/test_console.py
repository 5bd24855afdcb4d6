"""`up`'s console echoes only the loud lines its children log, each once, whole."""

from __future__ import annotations

from pathlib import Path

from pipeline.cli.console import LogEcho


def test_only_new_warning_and_error_lines_are_echoed_once_and_whole(tmp_path: Path) -> None:
    old = tmp_path / "worker-1.log"
    old.write_text("2026-01-01 00:00:00 ERROR pipeline.x from an earlier run\n")
    echo = LogEcho(tmp_path)
    with old.open("a") as log:
        log.write("[2026-01-01 00:00:01,000: INFO/MainProcess] Task received\n")
        log.write("[2026-01-01 00:00:02,000: WARNING/MainProcess] consumer: cannot connect\n")
        log.write("2026-01-01 00:00:03 ERROR pipeline.outbound half a li")
    (tmp_path / "receiver.log").write_text("WARNING:  Invalid HTTP request received.\nINFO: ok\n")
    assert list(echo.lines()) == [
        "[receiver] WARNING:  Invalid HTTP request received.",
        "[worker-1] [2026-01-01 00:00:02,000: WARNING/MainProcess] consumer: cannot connect",
    ]
    with old.open("a") as log:
        log.write("ne, now whole\n")
    assert list(echo.lines()) == [
        "[worker-1] 2026-01-01 00:00:03 ERROR pipeline.outbound half a line, now whole"
    ]
    assert list(echo.lines()) == []
