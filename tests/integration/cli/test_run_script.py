"""`./run --help` names its own commands and every `pipeline` subcommand."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline.cli import cli

ROOT = Path(__file__).resolve().parents[3]


def test_run_help_lists_every_pipeline_command() -> None:
    result = subprocess.run(
        [str(ROOT / "run"), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    lines = result.stdout.splitlines()
    listed = {line.split()[0] for line in lines if line.startswith("  ") and line.strip()}
    assert {"demo", "up", "test", "lint", "chaos"} <= listed
    assert set(cli.commands) <= listed, set(cli.commands) - listed
