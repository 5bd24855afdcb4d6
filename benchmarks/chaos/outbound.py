"""Read back what the pipeline published: every message of each outbound topic, in the order the
local Momento server numbered them, through the official SDK (a subscription resuming at
sequence number 1; the server runs with ``--retain`` larger than any run publishes).
"""

from __future__ import annotations

import contextlib
import time

from benchmarks.chaos.checks import parse_envelope

BATCH = 25  # subscriptions open at once


def create_cache(momento_local: str, cache: str) -> None:
    """Create ``cache`` on the local Momento server (the route publishes into it)."""
    from pipeline.config import Settings
    from pipeline.outbound import momento_client as mc

    client = mc.cache_client(Settings(momento_local=momento_local, momento_api_key=None))
    try:
        mc.create_cache(client, cache)
    finally:
        mc.close_client(client)


def read_topics(
    momento_local: str, cache: str, expected: dict[str, int], timeout_s: float = 120
) -> tuple[dict[str, list[tuple[int, str]]], list[str]]:
    """Every message of each topic in ``expected`` (topic -> at least that many), as
    (source event id, text); and problems met (gaps in the server's log, time-outs)."""
    from pipeline.config import Settings
    from pipeline.outbound import momento_client as mc
    from pipeline.outbound.subscriptions import ResilientSubscription

    settings = Settings(momento_local=momento_local, momento_api_key=None)
    log: dict[str, list[tuple[int, str]]] = {}
    problems: list[str] = []
    deadline = time.monotonic() + timeout_s
    topics = sorted(expected)
    client = mc.topic_client(settings, max_subscriptions=BATCH + 5)
    try:
        for start in range(0, len(topics), BATCH):
            batch = topics[start : start + BATCH]
            subs = {}
            try:
                for topic in batch:
                    sub = ResilientSubscription(client, cache, topic, resume_at=1, resume_page=0)
                    subs[topic] = sub.start()
                    log[topic] = []
                _drain(subs, log, expected, deadline, problems)
            finally:
                for sub in subs.values():
                    with contextlib.suppress(Exception):
                        sub.close()
    finally:
        mc.close_client(client)
    return log, problems


def _drain(
    subs: dict[str, object],
    log: dict[str, list[tuple[int, str]]],
    expected: dict[str, int],
    deadline: float,
    problems: list[str],
) -> None:
    """Poll until every topic has its expected count and nothing came for 1 s, or the deadline."""
    from pipeline.outbound.subscriptions import Message

    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        got = False
        for topic, sub in subs.items():
            while (event := sub.poll(0)) is not None:  # type: ignore[attr-defined]
                got = True
                if isinstance(event, Message):
                    log[topic].append(parse_envelope(event.value))
                else:
                    problems.append(f"{topic}: the server's log has a gap: {event}")
        now = time.monotonic()
        if got:
            quiet_since = now
        complete = all(len(log[t]) >= expected[t] for t in subs)
        if complete and now - quiet_since >= 1.0:
            return
        time.sleep(0.02)
    short = [t for t in subs if len(log[t]) < expected[t]]
    problems.append(f"outbound read timed out; short topics: {short[:5]}")
