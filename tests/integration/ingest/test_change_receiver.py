"""POST /changes/{source} over real HTTP with a real broker and worker: auth, rejections, and
records stored once however often they are delivered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pipeline.config import Settings
from tests.change_support import API_KEY, key_headers, stream_record
from tests.conftest import ReceiverServer, WorkerProcess, count_rows, queued_messages, wait_for


@pytest.fixture
def change_settings(db: Settings) -> Settings:
    return db.model_copy(
        update={
            "pipeline_change_api_keys": ["rotated-out", API_KEY],
            "pipeline_change_basic_auth": ["pipe:s3cret"],
            "pipeline_change_max_body_bytes": 4096,
        }
    )


def _record(seq: int = 1) -> bytes:
    return json.dumps(stream_record("INSERT", {"id": "u1"}, seq, new={"id": "u1"})).encode()


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({"content-type": "application/json"}, _record(), 401, "bad_api_key"),
        (key_headers("wrong"), _record(), 401, "bad_api_key"),
        (key_headers() | {"x-api-key": API_KEY[:-1]}, _record(), 401, "bad_api_key"),
        (key_headers(), b"{not json", 400, "malformed_body"),
        (key_headers(), b'{"eventName": "INSERT"}', 400, "malformed_body"),
        (key_headers(), b"\xff\xfe", 400, "malformed_body"),
        (key_headers(), b"[" + b" " * 5000 + b"]", 413, "body_too_large"),
        (key_headers() | {"content-type": "text/plain"}, _record(), 415, "unsupported_media_type"),
    ],
)
def test_rejections_have_stable_codes_and_enqueue_nothing(
    change_settings: Settings,
    receiver_factory: Callable[..., ReceiverServer],
    headers: dict[str, str],
    body: bytes,
    status: int,
    code: str,
) -> None:
    receiver = receiver_factory(change_settings)
    response = httpx.post(f"{receiver.url}/changes/dynamodb", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert response.json()["detail"]
    assert queued_messages(change_settings) == 0


def test_a_bad_source_and_a_wrong_method_are_refused(
    change_settings: Settings, receiver_factory: Callable[..., ReceiverServer]
) -> None:
    receiver = receiver_factory(change_settings)
    bad = httpx.post(f"{receiver.url}/changes/no:colons", content=_record(), headers=key_headers())
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_source")
    wrong = httpx.get(f"{receiver.url}/changes/dynamodb", headers=key_headers())
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")
    assert queued_messages(change_settings) == 0


def test_without_configured_keys_every_request_is_refused(
    db: Settings, receiver_factory: Callable[..., ReceiverServer]
) -> None:
    receiver = receiver_factory(db)
    response = httpx.post(f"{receiver.url}/changes/dynamodb", content=_record(),
                          headers=key_headers())  # fmt: skip
    assert (response.status_code, response.json()["error"]) == (401, "bad_api_key")


def test_the_key_header_name_is_configurable(
    change_settings: Settings, receiver_factory: Callable[..., ReceiverServer]
) -> None:
    custom = change_settings.model_copy(update={"pipeline_change_api_key_header": "X-Pipe-Key"})
    receiver = receiver_factory(custom)
    url = f"{receiver.url}/changes/dynamodb"
    ok = httpx.post(url, content=_record(), headers={"content-type": "application/json",
                                                     "x-pipe-key": API_KEY})  # fmt: skip
    assert ok.status_code == 200, ok.text
    assert httpx.post(url, content=_record(), headers=key_headers()).status_code == 401


def test_accepted_records_are_durable_and_stored_once_however_often_delivered(
    change_settings: Settings,
    receiver_factory: Callable[..., ReceiverServer],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    receiver = receiver_factory(change_settings)
    url = f"{receiver.url}/changes/dynamodb"
    batch = json.dumps([json.loads(_record(seq)) for seq in (1, 2, 3)]).encode()
    responses = [
        httpx.post(url, content=batch, headers=key_headers()),  # a batch array
        httpx.post(url, content=_record(2), headers=key_headers("rotated-out")),  # redelivered
        httpx.post(  # basic auth instead of a key
            url,
            content=_record(4),
            headers={"content-type": "application/json"},
            auth=("pipe", "s3cret"),
        ),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    assert [r.json()["records"] for r in responses] == [3, 1, 1]
    assert queued_messages(change_settings) >= 1  # durable in the broker before the 200
    worker_factory()
    assert wait_for(
        lambda: count_rows(change_settings, "SELECT count(*) FROM change_records") == 4, 30
    )
    assert wait_for(lambda: queued_messages(change_settings) == 0, 10)
    assert count_rows(change_settings, "SELECT count(*) FROM change_records") == 4
    assert count_rows(change_settings, "SELECT max(seq) FROM change_items") == 4


def test_an_unreachable_broker_is_a_503_not_a_500(
    change_settings: Settings, receiver_factory: Callable[..., ReceiverServer]
) -> None:
    down = change_settings.model_copy(
        update={"celery_broker_url": "redis://127.0.0.1:1/0", "pipeline_enqueue_timeout_s": 1.0}
    )
    receiver = receiver_factory(down, ready_checks={}, collectors=[])
    response = httpx.post(f"{receiver.url}/changes/dynamodb", content=_record(),
                          headers=key_headers(), timeout=10)  # fmt: skip
    assert response.status_code == 503
    assert response.json()["error"] in ("broker_unavailable", "overloaded")
    assert response.headers["retry-after"]


def test_the_openapi_document_describes_the_changes_route(
    change_settings: Settings, receiver_factory: Callable[..., ReceiverServer]
) -> None:
    receiver = receiver_factory(change_settings)
    spec = httpx.get(f"{receiver.url}/openapi.json").json()
    post = spec["paths"]["/changes/{source}"]["post"]
    assert set(post["responses"]) == {"200", "400", "401", "405", "413", "415", "503"}
    assert "bad_api_key" in post["responses"]["401"]["content"]["application/json"]["examples"]
    assert "ChangeRecord" in spec["components"]["schemas"]


KEYS = ["eventName", "dynamodb", "Keys", "table", "keys", "op", "seq", "S", "N", "M", "eventID",
        "eventSourceARN", "new", "SequenceNumber"]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


def test_no_json_body_however_odd_gets_a_server_error(
    change_settings: Settings, receiver_factory: Callable[..., ReceiverServer]
) -> None:
    receiver = receiver_factory(change_settings)
    valid = stream_record("MODIFY", {"id": "u1"}, 1, new={"id": "u1"})
    seen: set[int] = set()
    with httpx.Client(base_url=receiver.url, timeout=10) as client:

        @hypothesis_settings(max_examples=150, deadline=None, database=None,
                             suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
        @given(value=json_values | st.just(valid) | st.just([valid, valid]))
        def check(value: object) -> None:
            response = client.post("/changes/dynamodb", content=json.dumps(value),
                                   headers=key_headers())  # fmt: skip
            seen.add(response.status_code)
            assert response.status_code in (200, 400), response.text
            if response.status_code == 400:
                assert response.json()["error"] == "malformed_body"

        check()
    assert seen == {200, 400}, f"the strategy reaches too few outcomes: {seen}"


def test_the_receiver_command_refuses_to_start_with_no_credential_at_all(db: Settings) -> None:
    env = dict(os.environ) | {"PIPELINE_WEBHOOK_SECRETS": "", "PIPELINE_CHANGE_API_KEYS": ""}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "receiver", "--port", "1"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "PIPELINE_CHANGE_API_KEYS" in result.stderr
