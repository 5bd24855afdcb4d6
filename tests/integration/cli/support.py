"""Run the real `pipeline` CLI in a subprocess and time it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Run:
    """What one CLI run printed, how it exited and how long it took."""

    code: int
    stdout: str
    stderr: str
    elapsed_s: float

    @property
    def lines(self) -> list[str]:
        """Every non-empty line, stdout then stderr."""
        return [line for line in (self.stdout + self.stderr).splitlines() if line.strip()]


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 60.0,
) -> Run:
    """``python -m pipeline.cli ARGS`` with ``env`` over this process's environment."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=dict(os.environ) | dict(env or {}),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def free_port() -> int:
    """A port nothing listens on (bound, then released): free, or closed to whoever dials it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
