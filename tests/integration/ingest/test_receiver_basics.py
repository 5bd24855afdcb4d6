"""Receiver over real HTTP with a real broker: every rejection, and the happy path end to end."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pipeline.config import Settings
from pipeline.ingest.signing import sign
from tests.conftest import (
    TEST_SECRET,
    ReceiverServer,
    WorkerProcess,
    count_rows,
    queued_messages,
    signed_webhook,
    wait_for,
)


def test_signature_matches_the_momento_test_vector() -> None:
    from pipeline.ingest.signing import sign

    body = b'{"text":"some text", "another_field": "another field" }'
    expected = "b43f72787eb66410ff110295b036ef828e5686af21b414ce092f02c05deea3da"
    assert sign(body, "1234567890") == expected


def _stale() -> tuple[bytes, dict[str, str]]:
    return signed_webhook(1, publish_ms=1_000_000)


def _future() -> tuple[bytes, dict[str, str]]:
    import time

    return signed_webhook(1, publish_ms=int(time.time() * 1000) + 600_000)


def _unsigned() -> tuple[bytes, dict[str, str]]:
    body, headers = signed_webhook(1)
    del headers["momento-signature"]
    return body, headers


def _wrong_secret() -> tuple[bytes, dict[str, str]]:
    return signed_webhook(1, secret="not-the-secret")


def _tampered() -> tuple[bytes, dict[str, str]]:
    body, headers = signed_webhook(1)
    return body.replace(b"message 1", b"message 2"), headers


def _signed_raw(raw: bytes) -> Callable[[], tuple[bytes, dict[str, str]]]:
    from pipeline.ingest.signing import sign

    return lambda: (
        raw,
        {"content-type": "application/json", "momento-signature": sign(raw, TEST_SECRET)},
    )


def _event_at(event_ms: Callable[[int], int]) -> Callable[[], tuple[bytes, dict[str, str]]]:
    """A fresh webhook whose event_timestamp is ``event_ms(publish_timestamp)``."""

    def make() -> tuple[bytes, dict[str, str]]:
        import time

        publish_ms = int(time.time() * 1000)
        body = {
            "cache": "chat",
            "topic": "room-1",
            "event_timestamp": event_ms(publish_ms),
            "publish_timestamp": publish_ms,
            "topic_sequence_number": 1,
            "text": "x",
        }
        return _signed_raw(json.dumps(body).encode())()

    return make


def _nested_field(depth: int) -> Callable[[], tuple[bytes, dict[str, str]]]:
    body, _ = signed_webhook(1)
    return _signed_raw(body[:-1] + b', "extra": ' + b"[" * depth + b"]" * depth + b"}")


def _wrong_content_type() -> tuple[bytes, dict[str, str]]:
    body, headers = signed_webhook(1)
    headers["content-type"] = "text/plain"
    return body, headers


def _too_large() -> tuple[bytes, dict[str, str]]:
    return signed_webhook(1, text_value="x" * 70_000)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (_unsigned, 401, "bad_signature"),
        (_wrong_secret, 401, "bad_signature"),
        (_tampered, 401, "bad_signature"),
        (_stale, 401, "stale_event"),
        (_future, 401, "stale_event"),
        (_signed_raw(b"{not json"), 400, "malformed_body"),
        (_signed_raw(b'{"cache": "c", "topic": "t"}'), 400, "malformed_body"),
        (
            _signed_raw(
                json.dumps(
                    {
                        "cache": "c",
                        "topic": "t",
                        "event_timestamp": "1",
                        "publish_timestamp": 1,
                        "topic_sequence_number": 1,
                        "text": "x",
                    }
                ).encode()
            ),
            400,
            "malformed_body",
        ),
        (_signed_raw(b"\xff\xfe{}"), 400, "malformed_body"),
        (_signed_raw(b"[" * 60_000), 400, "malformed_body"),  # a RecursionError in json.loads
        (_signed_raw(b'{"a":' * 12_000), 400, "malformed_body"),
        (_nested_field(40), 400, "malformed_body"),  # parses, but deeper than 32 levels
        (_event_at(lambda _: 1_352_408_701_009_006_080), 400, "timestamp_out_of_range"),
        (_event_at(lambda p: p // 1000), 400, "timestamp_out_of_range"),  # seconds, not ms
        (_event_at(lambda p: p - 86_400_001), 400, "timestamp_out_of_range"),
        (_event_at(lambda p: p + 31_000), 400, "timestamp_out_of_range"),
        (_wrong_content_type, 415, "unsupported_media_type"),
        (_too_large, 413, "body_too_large"),
    ],
)
def test_rejection_has_its_status_and_code_and_enqueues_nothing(
    db: Settings,
    receiver_factory: Callable[..., ReceiverServer],
    make: Callable[[], tuple[bytes, dict[str, str]]],
    status: int,
    code: str,
) -> None:
    receiver = receiver_factory()
    body, headers = make()
    response = httpx.post(f"{receiver.url}/webhooks/momento", content=body, headers=headers)
    assert response.status_code == status
    assert response.json()["error"] == code
    assert response.json()["detail"]
    assert queued_messages(db) == 0
    assert count_rows(db, "SELECT count(*) FROM events") == 0


def test_unknown_route_and_wrong_method_answer_json(
    db: Settings, receiver_factory: Callable[..., ReceiverServer]
) -> None:
    receiver = receiver_factory()
    missing = httpx.post(f"{receiver.url}/webhooks/other", content=b"{}")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    wrong = httpx.get(f"{receiver.url}/webhooks/momento")
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"


def test_wrong_method_on_every_other_route_says_which_are_allowed(
    db: Settings, receiver_factory: Callable[..., ReceiverServer]
) -> None:
    receiver = receiver_factory()
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            response = httpx.request(method, f"{receiver.url}{path}")
            assert response.status_code == 405, (method, path)
            allowed = sorted(response.headers["allow"].split(", "))  # from a set: any order
            assert allowed == ["GET", "HEAD"], (method, path)
            assert response.json()["error"] == "method_not_allowed"


def test_old_and_new_secret_both_pass_during_rotation(
    db: Settings, receiver_factory: Callable[..., ReceiverServer]
) -> None:
    rotating = db.model_copy(update={"pipeline_webhook_secrets": ["old-secret", "new-secret"]})
    receiver = receiver_factory(rotating)
    for seq, secret in ((1, "old-secret"), (2, "new-secret")):
        body, headers = signed_webhook(seq, secret=secret)
        response = httpx.post(f"{receiver.url}/webhooks/momento", content=body, headers=headers)
        assert response.status_code == 204, response.text
    body, headers = signed_webhook(3, secret=TEST_SECRET)
    assert (
        httpx.post(f"{receiver.url}/webhooks/momento", content=body, headers=headers).status_code
        == 401
    )


def test_same_signed_body_twice_is_acked_twice_and_stored_once(
    db: Settings,
    receiver_factory: Callable[..., ReceiverServer],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    worker_factory("dedup")
    receiver = receiver_factory()
    body, headers = signed_webhook(42)
    for _ in range(2):
        response = httpx.post(f"{receiver.url}/webhooks/momento", content=body, headers=headers)
        assert response.status_code == 204
        assert response.content == b""
    assert wait_for(lambda: count_rows(db, "SELECT count(*) FROM events") == 1, 20)
    assert wait_for(lambda: queued_messages(db) == 0, 20)
    assert count_rows(db, "SELECT count(*) FROM events") == 1


def test_health_ready_metrics_and_openapi(
    db: Settings, receiver_factory: Callable[..., ReceiverServer]
) -> None:
    receiver = receiver_factory()
    assert httpx.get(f"{receiver.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{receiver.url}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"broker": "ok", "database": "ok"}
    body, headers = signed_webhook(1)
    httpx.post(f"{receiver.url}/webhooks/momento", content=body, headers=headers)
    metrics = httpx.get(f"{receiver.url}/metrics").text
    assert 'pipeline_webhook_requests_total{outcome="accepted",reason=""}' in metrics
    assert "pipeline_ingest_batch_size_events_bucket" in metrics
    assert 'pipeline_queue_depth_messages{queue="ingest"}' in metrics
    assert 'celery_queue_length{queue_name="ingest"}' in metrics
    assert "pipeline_queue_depth_up 1.0" in metrics
    assert "pipeline_db_metrics_up 1.0" in metrics
    spec = httpx.get(f"{receiver.url}/openapi.json").json()
    assert "/webhooks/momento" in spec["paths"]


# --- hypothesis: no signed JSON body, however odd, gets a 5xx ------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
FIELDS = (
    "cache",
    "topic",
    "event_timestamp",
    "publish_timestamp",
    "topic_sequence_number",
    "token_id",
    "text",
)


@st.composite
def signed_json_bodies(draw: st.DrawFn) -> bytes:
    """Any JSON text, most often an object with Momento's fields holding any JSON values."""
    now = int(time.time() * 1000)
    kind = draw(st.sampled_from(["webhook", "webhook", "webhook", "any", "deep"]))
    if kind == "deep":
        depth = draw(st.integers(1, 3_000))
        return draw(
            st.sampled_from([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth])
        )
    if kind == "any":
        return json.dumps(draw(json_values)).encode()
    event: dict[str, Any] = {
        "cache": "hypothesis",
        "topic": "never-5xx",
        "event_timestamp": now - 5,
        "publish_timestamp": now,
        "topic_sequence_number": 1,
        "text": "x",
    }
    for name in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=4)):
        if "timestamp" in name and draw(st.booleans()):
            event[name] = now + draw(st.integers(-120_000, 120_000))  # near the window's edges
        else:
            event[name] = draw(json_values)
    event |= draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2))
    return json.dumps(event, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


def test_no_correctly_signed_json_body_gets_a_server_error(
    db: Settings, receiver_factory: Callable[..., ReceiverServer]
) -> None:
    receiver = receiver_factory()
    seen: set[int] = set()
    with httpx.Client(base_url=receiver.url, timeout=10) as client:

        @hypothesis_settings(
            max_examples=200,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(body=signed_json_bodies())
        def check(body: bytes) -> None:
            headers = {
                "content-type": "application/json",
                "momento-signature": sign(body, TEST_SECRET),
            }
            response = client.post("/webhooks/momento", content=body, headers=headers)
            seen.add(response.status_code)
            assert response.status_code in (204, 400, 401), response.text
            if response.status_code != 204:
                assert response.json()["error"] in (
                    "malformed_body",
                    "timestamp_out_of_range",
                    "stale_event",
                )

        check()
    assert {204, 400} <= seen, f"the strategy reaches too few outcomes: {seen}"
