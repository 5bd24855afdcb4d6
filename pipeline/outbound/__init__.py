"""Outbound: everything that talks to Momento on the way out.

``momento_client`` (clients, publish and cache calls) and ``subscriptions`` are the only modules
importing the SDK; ``publisher`` drains the outbox, ``ordered_sender`` sends an ordered route's
results in sequence, ``ratelimit`` keeps to the quota.
May import: the shared floor only.
"""
