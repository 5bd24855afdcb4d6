"""A Redis channel whose broker connection is gone (pure: stubs, and kombu's own class)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import redis

from pipeline.ingest.held_deliveries import guard_detached_channels, refuse_when_detached


def test_a_detached_channel_raises_a_connection_error_kombu_handles() -> None:
    def connparams(channel: Any, asynchronous: bool = False) -> dict[str, Any]:
        return {"host": channel.connection.client, "asynchronous": asynchronous}

    guarded = refuse_when_detached(connparams)
    attached = SimpleNamespace(connection=SimpleNamespace(client="conn"))
    assert guarded(attached, asynchronous=True) == {"host": "conn", "asynchronous": True}
    # Unguarded, both raise AttributeError, which ended the worker's event loop.
    for detached in (
        SimpleNamespace(connection=None),
        SimpleNamespace(connection=SimpleNamespace(client=None)),
    ):
        with pytest.raises(redis.exceptions.ConnectionError):
            guarded(detached)


def test_the_guard_is_installed_once_and_is_among_kombus_connection_errors() -> None:
    from kombu.transport import redis as kombu_redis

    guard_detached_channels()
    first = kombu_redis.Channel._connparams
    guard_detached_channels()
    assert kombu_redis.Channel._connparams is first
    assert getattr(first, "pipeline_guarded", False)
    # What Celery's ack_log_error and ignore_errors catch for this transport.
    assert issubclass(redis.exceptions.ConnectionError, kombu_redis.Transport.connection_errors)
