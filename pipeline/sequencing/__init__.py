"""Sequencing: per-topic order, gaps, duplicates and resets of the stored events.

``rules`` and ``state`` are pure (no I/O); ``store`` applies them to Postgres.
May import: the shared floor only.
"""
