"""Aggregation: incremental roll-ups per topic and window, retention, summaries and stats.

Driven by beat (``tasks.aggregate``) and by ``pipeline stats``.
May import: the shared floor and ``pipeline.outbound`` (to publish summaries).
"""
