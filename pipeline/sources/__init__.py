"""Sources: other doors into the ingest path than the webhook receiver.

Empty for now: the subscription listener (``pipeline listen``, ``[[subscriptions]]`` in the
routes file) will live here, feeding the same ingest store as the receiver.
May import: the shared floor and ``pipeline.ingest``.
"""
