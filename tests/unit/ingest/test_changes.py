"""Change-record bodies: both shapes, batches, natural keys, and every rejection."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from pipeline.errors import BadApiKey, MalformedBody
from pipeline.ingest.api_keys import ChangeAuth
from pipeline.ingest.changes import parse_changes
from tests.change_support import stream_record


def _body(value: Any) -> str:
    return json.dumps(value)


def test_a_dynamodb_stream_record_becomes_a_plain_change() -> None:
    record = stream_record(
        "MODIFY",
        {"id": "u1"},
        111100000000000000000000001234,
        new={"id": "u1", "score": Decimal("0.30000000000000000001"), "tags": ["a"]},
        old={"id": "u1", "score": 7},
    )
    (change,) = parse_changes(_body(record), "dynamodb")
    assert change.table == "user"
    assert change.op == "upsert"
    assert change.event_name == "MODIFY"
    assert change.keys == {"id": "u1"}
    assert change.new == {"id": "u1", "score": Decimal("0.30000000000000000001"), "tags": ["a"]}
    assert change.old == {"id": "u1", "score": 7}
    assert change.seq == 111100000000000000000000001234
    assert change.idempotency_key == "ddb:evt-user-111100000000000000000000001234"
    assert change.created_ms == 1_796_000_000_000
    assert change.item_key == '{"id":"u1"}'


def test_insert_modify_remove_map_to_upsert_and_delete() -> None:
    batch = [
        stream_record("INSERT", {"id": "a"}, 1, new={"id": "a"}),
        stream_record("MODIFY", {"id": "a"}, 2, new={"id": "a"}, old={"id": "a"}),
        stream_record("REMOVE", {"id": "a"}, 3, old={"id": "a"}),
    ]
    changes = parse_changes(_body(batch), "dynamodb")
    assert [(c.event_name, c.op, c.seq) for c in changes] == [
        ("INSERT", "upsert", 1), ("MODIFY", "upsert", 2), ("REMOVE", "delete", 3)
    ]  # fmt: skip
    assert changes[2].new is None


def test_the_plain_shape_and_its_natural_key() -> None:
    one = {"table": "orders", "keys": {"id": 7, "b": "x"}, "op": "upsert",
           "new": {"id": 7, "total": 1.10}, "old": None, "seq": "18446744073709551617"}  # fmt: skip
    (change,) = parse_changes(_body(one), "pg")
    assert change.seq == 2**64 + 1
    assert change.new == {"id": 7, "total": Decimal("1.10")}
    assert change.event_name is None
    assert change.item_key == '{"b":"x","id":7}'  # canonical: key order does not matter
    (again,) = parse_changes(_body(one | {"keys": {"b": "x", "id": 7}}), "pg")
    assert again.idempotency_key == change.idempotency_key
    (later,) = parse_changes(_body(one | {"seq": 18446744073709551618}), "pg")
    assert later.idempotency_key != change.idempotency_key


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "empty array"),
        ("[1]", r"record\[0\]: must be a JSON object"),
        (_body({"eventName": "UPDATE"}), "eventName must be one of"),
        (_body(stream_record("INSERT", {"id": "a"}, 1) | {"eventID": ""}), "eventID"),
        (
            _body(stream_record("INSERT", {"id": "a"}, 1) | {"eventSourceARN": "arn:aws:s3:::b"}),
            "eventSourceARN",
        ),
        (_body(stream_record("INSERT", {}, 1)), "at least one key"),
        (_body({"table": "t", "keys": {"id": 1}, "op": "merge", "seq": 1}), "op must be"),
        (_body({"table": "t", "keys": {"id": 1}, "op": "upsert", "seq": -1}), "seq must be"),
        (_body({"table": "t", "keys": {"id": 1}, "op": "upsert", "seq": "1" * 41}), "40 digits"),
        (_body({"table": "t", "keys": {"id": 1}, "op": "upsert"}), "seq must be"),
        (_body({"table": "t", "keys": {"id": 1}, "op": "upsert", "seq": 1, "x": 2}), "unknown"),
        (_body({"table": "t", "keys": {"id": "a\u0000"}, "op": "upsert", "seq": 1}), "NUL"),
        (
            _body({"table": "t", "keys": {"id": 1}, "op": "upsert", "seq": 1, "new": [1]}),
            "new must be an object",
        ),
        ('{"table": "t", "keys": {"id": NaN}, "op": "upsert", "seq": 1}', "not valid JSON"),
        (_body([{"table": "t", "keys": {"id": 1}, "op": "upsert", "seq": 1}] * 1001), "at most"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(body: str, message: str) -> None:
    with pytest.raises(MalformedBody, match=message):
        parse_changes(body, "dynamodb")


def test_a_bad_record_in_a_batch_is_named_by_its_index() -> None:
    good = stream_record("INSERT", {"id": "a"}, 1, new={"id": "a"})
    bad = stream_record("INSERT", {"id": "a"}, 2) | {"dynamodb": {"Keys": {"id": {"N": "x"}}}}
    with pytest.raises(MalformedBody, match=r"record\[1\]: .*dynamodb\.Keys\.id"):
        parse_changes(_body([good, bad]), "dynamodb")


def test_api_keys_rotate_and_basic_auth_is_an_alternative() -> None:
    auth = ChangeAuth("X-Api-Key", ["new-key", "old-key"], ["pipe:s3cret"])
    auth.check([(b"x-api-key", b"new-key")])
    auth.check([(b"x-api-key", b"old-key")])
    auth.check([(b"authorization", b"Basic cGlwZTpzM2NyZXQ=")])  # pipe:s3cret
    for headers in (
        [],
        [(b"x-api-key", b"new-ke")],
        [(b"x-api-key", b"")],
        [(b"other", b"new-key")],
        [(b"authorization", b"Basic cGlwZTp3cm9uZw==")],  # pipe:wrong
        [(b"authorization", b"Basic !!!")],
        [(b"authorization", b"Bearer new-key")],
    ):
        with pytest.raises(BadApiKey):
            auth.check(headers)


def test_no_configured_credential_refuses_everything() -> None:
    auth = ChangeAuth("x-api-key", [])
    assert not auth.configured
    with pytest.raises(BadApiKey, match="PIPELINE_CHANGE_API_KEYS"):
        auth.check([(b"x-api-key", b"")])
