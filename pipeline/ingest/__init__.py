"""Ingest: the receiver's door into the pipeline and the task that stores what comes through it.

Verify and parse each webhook (``signing``, ``events``); group-commit requests into broker
messages (``group_commit``, spaced by ``spacing``, sent by ``transports``), kept in the
``ledger`` until stored; store each batch idempotently (``store``), which hands new events to
sequencing.
May import: the shared floor, ``pipeline.sequencing`` and the stages after it.
"""
