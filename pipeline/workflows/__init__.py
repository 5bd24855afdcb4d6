"""Workflows: routes, dispatch of stored events to them, ordered runs and the outbox.

User workflow steps return ``pipeline.workflows.output(...)`` (re-exported from ``results``).
May import: the shared floor, ``pipeline.sequencing`` and ``pipeline.outbound``.
"""

from pipeline.workflows.results import Output, output

__all__ = ["Output", "output"]
