"""Receiver over real HTTP with a real broker: every rejection, and the happy path end to end."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from pipeline.config import Settings
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
    from pipeline.signing import sign

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
    from pipeline.signing import sign

    return lambda: (
        raw,
        {"content-type": "application/json", "momento-signature": sign(raw, TEST_SECRET)},
    )


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
    assert "pipeline_queue_depth_up 1.0" in metrics
    assert "pipeline_db_metrics_up 1.0" in metrics
    spec = httpx.get(f"{receiver.url}/openapi.json").json()
    assert "/webhooks/momento" in spec["paths"]
