"""Momento's HTTP API on the local server, cross-checked with the official SDK on the gRPC side."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from momento.responses import CacheGet, CacheSet, TopicPublish
from momento.responses import TopicSubscriptionItem as Item

from pipeline.emulator import EmulatorServer
from tests.integration.emulator_support import (
    WebhookSink,
    cache_client,
    subscription,
    take,
    topic_client,
    unique,
)

CACHE = "http-tests"
POLL_S = 1.5


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    server = EmulatorServer(
        port=0, admin_port=None, http_port=0, http_poll_s=POLL_S, idle_reset_s=0
    ).start()
    server.create_cache(CACHE)
    yield server
    server.stop()


@pytest.fixture
def http(emu: EmulatorServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": "local-key"}
    with httpx.Client(base_url=emu.http_url or "", headers=headers, timeout=10) as client:
        yield client


def test_documented_put_is_read_by_the_sdk_get(emu: EmulatorServer, http: httpx.Client) -> None:
    body = b'{"id":"001","name":"x"}'
    put = http.put(f"/cache/{CACHE}?key=001&ttl_seconds=300", content=body)
    assert put.status_code == 204, put.text
    with cache_client(emu.port) as cache:
        got = cache.get(CACHE, "001")
    assert isinstance(got, CacheGet.Hit), got
    assert got.value_bytes == body


def test_sdk_set_is_read_over_http_and_delete_is_seen_by_the_sdk(
    emu: EmulatorServer, http: httpx.Client
) -> None:
    key = unique("k")
    with cache_client(emu.port) as cache:
        assert isinstance(cache.set(CACHE, key, b"\x00\xffbytes"), CacheSet.Success)
        got = http.get(f"/cache/{CACHE}", params={"key": key})
        assert got.status_code == 200
        assert got.headers["content-type"] == "application/octet-stream"
        assert got.content == b"\x00\xffbytes"
        deleted = http.delete(f"/cache/{CACHE}", params={"key": key})
        assert deleted.status_code == 204
        assert isinstance(cache.get(CACHE, key), CacheGet.Miss)
    missing = http.get(f"/cache/{CACHE}", params={"key": key})
    assert (missing.status_code, missing.text) == (404, "Key Not Found")


def test_key_base64_names_a_binary_key(emu: EmulatorServer, http: httpx.Client) -> None:
    key = b"\x01bin\xfe" + unique("k").encode()
    encoded = base64.urlsafe_b64encode(key).decode().rstrip("=")
    put = http.put(
        f"/cache/{CACHE}", params={"key_base64": encoded, "ttl_seconds": 60}, content=b"v"
    )
    assert put.status_code == 204, put.text
    with cache_client(emu.port) as cache:
        got = cache.get(CACHE, key)
    assert isinstance(got, CacheGet.Hit)
    assert got.value_bytes == b"v"
    assert http.get(f"/cache/{CACHE}", params={"key_base64": encoded}).content == b"v"


def test_ttl_seconds_is_required_and_honoured(emu: EmulatorServer, http: httpx.Client) -> None:
    key = unique("ttl")
    assert http.put(f"/cache/{CACHE}", params={"key": key}, content=b"v").status_code == 400
    bad = http.put(f"/cache/{CACHE}", params={"key": key, "ttl_seconds": "soon"}, content=b"v")
    assert bad.status_code == 400
    assert "ttl_seconds" in bad.text
    zero = http.put(f"/cache/{CACHE}", params={"key": key, "ttl_seconds": 0}, content=b"v")
    assert zero.status_code == 400
    short = http.put(f"/cache/{CACHE}", params={"key": key, "ttl_seconds": 1}, content=b"v")
    assert short.status_code == 204
    assert http.get(f"/cache/{CACHE}", params={"key": key}).status_code == 200
    time.sleep(1.2)
    assert http.get(f"/cache/{CACHE}", params={"key": key}).status_code == 404


def test_unknown_cache_and_missing_key_are_told_apart(http: httpx.Client) -> None:
    for method in ("GET", "PUT", "DELETE"):
        answer = http.request(method, "/cache/no-such-cache?key=k&ttl_seconds=5", content=b"v")
        assert answer.status_code == 404
        assert answer.text.startswith("Cache Not Found")
    assert http.get(f"/cache/{CACHE}").status_code == 400  # neither key nor key_base64
    publish = http.post("/topics/no-such-cache/t", content=b"x")
    assert publish.status_code == 404
    poll = http.get("/topics/no-such-cache/t")
    assert poll.status_code == 404


def test_token_in_header_or_query_but_not_both_and_not_neither(emu: EmulatorServer) -> None:
    url = f"{emu.http_url}/cache/{CACHE}"
    params = {"key": unique("auth"), "ttl_seconds": "60"}
    with httpx.Client(timeout=5) as client:
        assert client.put(url, params=params, content=b"v").status_code == 401
        empty = client.put(url, params=params, headers={"Authorization": ""}, content=b"v")
        assert empty.status_code == 401
        by_query = client.put(url, params={**params, "token": "t"}, content=b"v")
        assert by_query.status_code == 204
        both = client.put(
            url, params={**params, "token": "t"}, headers={"Authorization": "t"}, content=b"v"
        )
        assert both.status_code == 400
        assert "not both" in both.text


def test_api_key_option_accepts_only_that_token() -> None:
    with EmulatorServer(port=0, admin_port=None, http_port=0, api_key="s3cret") as server:
        server.create_cache(CACHE)
        url = f"{server.http_url}/cache/{CACHE}"
        params = {"key": "k", "ttl_seconds": "60"}
        with httpx.Client(timeout=5) as client:
            wrong = client.put(url, params=params, headers={"Authorization": "x"}, content=b"v")
            assert wrong.status_code == 401
            right = client.put(
                url, params=params, headers={"Authorization": "s3cret"}, content=b"v"
            )
            assert right.status_code == 204
            assert client.get(url, params={"key": "k", "token": "s3cret"}).content == b"v"


def test_http_publish_reaches_sdk_subscribers_and_the_webhook(
    emu: EmulatorServer, http: httpx.Client
) -> None:
    topic = unique("pub")
    with WebhookSink() as sink, topic_client(emu.port) as topics:
        emu.register_webhook(CACHE, topic, sink.url)
        sub = subscription(topics.subscribe(CACHE, topic))
        text = http.post(
            f"/topics/{CACHE}/{topic}", content="héllo", headers={"Content-Type": "text/plain"}
        )
        binary = http.post(
            f"/topics/{CACHE}/{topic}",
            content=b"\x00\x01",
            headers={"Content-Type": "application/octet-stream"},
        )
        assert (text.status_code, binary.status_code) == (204, 204)
        items = take(sub, 2)
        sub.unsubscribe()
        hooks = sink.wait_for(2)
    assert isinstance(items[0], Item.Text)
    assert items[0].value == "héllo"
    assert isinstance(items[1], Item.Binary)
    assert items[1].value == b"\x00\x01"
    assert [i.sequence_number for i in items] == [1, 2]
    assert hooks[0].json["text"] == "héllo"
    assert hooks[0].json["topic_sequence_number"] == 1


def test_publish_rejects_binary_sent_as_text_and_oversized_messages(
    emu: EmulatorServer, http: httpx.Client
) -> None:
    path = f"/topics/{CACHE}/{unique('bad')}"
    not_utf8 = http.post(path, content=b"\xff\xfe", headers={"Content-Type": "text/plain"})
    assert not_utf8.status_code == 400
    too_big = http.post(path, content=b"x" * (emu.max_publish_bytes + 1))
    assert too_big.status_code == 429


def test_long_poll_returns_the_latest_sdk_publish_then_resumes(
    emu: EmulatorServer, http: httpx.Client
) -> None:
    topic = unique("poll")
    with topic_client(emu.port) as topics:
        for i in range(3):
            assert isinstance(topics.publish(CACHE, topic, f"m{i}"), TopicPublish.Success)
        first = http.get(f"/topics/{CACHE}/{topic}", params={"sequence_number": 0})
        assert first.status_code == 200
        (entry,) = first.json()["items"]
        item = entry["item"]
        assert item["topic_sequence_number"] == 3
        assert item["value"] == {"text": "m2"}
        page = item["sequence_page"]
        assert page != 0

        def publish_later() -> None:
            time.sleep(0.4)
            topics.publish(CACHE, topic, b"\x07bin")

        later = threading.Thread(target=publish_later)
        started = time.monotonic()
        later.start()
        resumed = http.get(
            f"/topics/{CACHE}/{topic}", params={"sequence_number": 4, "sequence_page": page}
        )
        waited = time.monotonic() - started
        later.join()
    assert resumed.status_code == 200
    assert 0.3 < waited < POLL_S, waited  # blocked until the publish, not until the cap
    (entry,) = resumed.json()["items"]
    assert entry["item"]["topic_sequence_number"] == 4
    assert entry["item"]["sequence_page"] == page
    assert base64.b64decode(entry["item"]["value"]["binary"]) == b"\x07bin"


def test_long_poll_replays_from_a_resume_point_and_flags_a_stale_page(
    emu: EmulatorServer, http: httpx.Client
) -> None:
    topic = unique("replay")
    for i in range(5):
        assert http.post(f"/topics/{CACHE}/{topic}", content=f"r{i}").status_code == 204
    replay = http.get(f"/topics/{CACHE}/{topic}", params={"sequence_number": 3}).json()["items"]
    assert [e["item"]["topic_sequence_number"] for e in replay] == [3, 4, 5]
    assert [e["item"]["value"]["text"] for e in replay] == ["r2", "r3", "r4"]
    page = replay[0]["item"]["sequence_page"]
    stale = http.get(
        f"/topics/{CACHE}/{topic}", params={"sequence_number": 6, "sequence_page": page + 1}
    ).json()["items"]
    assert stale[0] == {
        "discontinuity": {
            "last_topic_sequence": 5,
            "new_topic_sequence": 1,
            "new_sequence_page": page,
        }
    }
    assert [e["item"]["topic_sequence_number"] for e in stale[1:]] == [1, 2, 3, 4, 5]


def test_long_poll_answers_empty_at_the_server_cap(http: httpx.Client) -> None:
    topic = unique("idle")
    started = time.monotonic()
    answer = http.get(f"/topics/{CACHE}/{topic}", params={"sequence_number": 0})
    waited = time.monotonic() - started
    assert answer.status_code == 200
    assert answer.json() == {"items": []}
    assert POLL_S - 0.1 < waited < POLL_S + 2, waited


def test_long_poll_rejects_bad_numbers(http: httpx.Client) -> None:
    bad = http.get(f"/topics/{CACHE}/t", params={"sequence_number": "-1"})
    assert bad.status_code == 400
    assert "sequence_number" in bad.text
