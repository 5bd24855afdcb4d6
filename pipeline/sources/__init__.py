"""Sources: doors into the ingest path besides the webhook receiver.

``listener`` (``pipeline listen``) consumes the routes file's ``[[subscriptions]]`` topics by
subscription; ``leases`` shares those topics among listeners; ``items`` is how a received
message travels to the ingest task and the event row it becomes.
May import: the shared floor, ``pipeline.ingest`` (the same group commit and store),
``pipeline.outbound``'s Momento client and subscriptions, and the routes file parser.
"""
