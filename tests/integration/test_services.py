"""Embedded services: start, reuse by a second start, data kept across restart, clean stop."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest
import redis

from pipeline.stores import EmbeddedBroker, EmbeddedPostgres, _pid_alive


def test_broker_keeps_acknowledged_writes_across_a_crash(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path, port=0)
    url = broker.start()
    client = redis.Redis.from_url(url)
    client.lpush("ingest", "batch-1")
    client.close()
    assert broker._process is not None
    broker._process.kill()  # no clean shutdown: only the fsynced AOF can save the data
    broker._process.wait()
    broker._process = None

    restarted = EmbeddedBroker(tmp_path, port=0)
    client = redis.Redis.from_url(restarted.start())
    try:
        assert client.lrange("ingest", 0, -1) == [b"batch-1"]
    finally:
        client.close()
        restarted.stop()


def test_second_start_reuses_the_running_broker_and_only_the_owner_stops_it(tmp_path: Path) -> None:
    first = EmbeddedBroker(tmp_path, port=0)
    url = first.start()
    second = EmbeddedBroker(tmp_path, port=0)
    assert second.start() == url
    assert not second.owned
    second.stop()
    assert redis.Redis.from_url(url).ping()
    first.stop()
    assert first.running_url() is None
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()


def test_broker_moves_to_a_free_port_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        broker = EmbeddedBroker(tmp_path, port=taken)
        url = broker.start()
        try:
            assert broker.port != taken
            assert redis.Redis.from_url(url).ping()
        finally:
            broker.stop()


def test_postgres_keeps_data_across_restart_and_stops_cleanly(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path)
    url = server.start().replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('survives')")
    pid = int((tmp_path / "postgres" / "postmaster.pid").read_text().split()[0])
    server.stop()
    assert not _pid_alive(pid)
    assert server.running_url() is None

    again = EmbeddedPostgres(tmp_path)
    url = again.start().replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("survives",)]
        assert again.running_url() is not None
    finally:
        again.stop()
