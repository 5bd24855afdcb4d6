"""The ``pipeline`` command (``pipeline.cli:main``) and what it runs: stack, demo, replay.

May import: anything in ``pipeline``; nothing in ``pipeline`` imports it back.
"""

from pipeline.cli.main import cli, main

__all__ = ["cli", "main"]
