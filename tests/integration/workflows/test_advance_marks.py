"""Advance marks on a real broker: one advance per ordered topic waits at a time."""

from __future__ import annotations

import redis

from pipeline.workflows import advance_marks


def test_a_topic_gets_one_advance_until_it_starts_then_another(redis_url: str) -> None:
    key = "route\x1fcache\x1ftopic-marks"
    client = redis.Redis.from_url(redis_url)
    client.delete(f"{advance_marks.PREFIX}{key}")
    try:
        other = "route\x1fcache\x1ftopic-other"
        client.delete(f"{advance_marks.PREFIX}{other}")
        assert advance_marks.mark(redis_url, [key]) == {key}  # none on the way: send one
        # One waits: the next nudge sends none for it, but one for a topic without.
        assert advance_marks.mark(redis_url, [key, other]) == {other}
        ttl_ms = client.pttl(f"{advance_marks.PREFIX}{key}")
        assert 0 < ttl_ms <= advance_marks.TTL_MS  # a lost task costs at most the TTL
        advance_marks.clear(redis_url, key)  # the advance starts
        assert advance_marks.mark(redis_url, [key, other]) == {key}
    finally:
        client.delete(f"{advance_marks.PREFIX}{key}", f"{advance_marks.PREFIX}{other}")
        client.close()


def test_other_brokers_always_send() -> None:
    assert advance_marks.mark("amqp://guest@127.0.0.1:1//", ["k"]) == {"k"}
    assert advance_marks.mark("amqp://guest@127.0.0.1:1//", ["k", "j"]) == {"k", "j"}
