"""Webhook delivery from the emulator to a real HTTP endpoint, signatures checked independently."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.emulator import USER_AGENT, DeliveryStats, EmulatorServer, FaultSpec, sign
from pipeline.emulator.faults import FaultPlan, derive_seed
from pipeline.emulator.registrations import apply_registrations, load_registrations
from tests.integration.emulator_support import WebhookSink, topic_client, unique

CACHE = "webhook-tests"
SEED = 20240601
BODY_KEYS = [
    "cache",
    "topic",
    "event_timestamp",
    "publish_timestamp",
    "topic_sequence_number",
    "token_id",
    "text",
]


def independent_signature(secret: str, body: bytes) -> str:
    """HMAC-SHA3-256 computed here, not with the code under test."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha3_256).hexdigest()


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, seed=SEED, idle_reset_s=0).start()
    server.create_cache(CACHE)
    yield server
    server.stop()


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with WebhookSink() as endpoint:
        yield endpoint


def publish_all(emu: EmulatorServer, topic: str, count: int, spacing_s: float = 0.0) -> None:
    with topic_client(emu.port) as client:
        for i in range(1, count + 1):
            client.publish(CACHE, topic, f"msg-{i}")
            if spacing_s:
                time.sleep(spacing_s)


def stats_when(emu: EmulatorServer, topic: str, field: str, value: int) -> DeliveryStats:
    """The webhook's counters once ``field`` reached ``value`` (or after 5 s)."""
    end = time.monotonic() + 5
    stats = emu.webhook_stats(CACHE, topic)
    while getattr(stats, field) < value and time.monotonic() < end:
        time.sleep(0.02)
        stats = emu.webhook_stats(CACHE, topic)
    return stats


def test_signature_matches_momentos_test_vector() -> None:
    body = b'{"text":"some text", "another_field": "another field" }'
    expected = "b43f72787eb66410ff110295b036ef828e5686af21b414ce092f02c05deea3da"
    assert independent_signature("1234567890", body) == expected
    assert sign("1234567890", body) == expected


def test_publish_posts_momentos_body_and_a_valid_signature(
    emu: EmulatorServer, sink: WebhookSink
) -> None:
    topic = unique("hook")
    secret = emu.register_webhook(CACHE, topic, sink.url)
    before_ms = time.time_ns() // 1_000_000
    publish_all(emu, topic, 3)
    received = sink.wait_for(3)
    assert len(received) == 3
    bodies = sorted((r.json for r in received), key=lambda b: b["topic_sequence_number"])
    for n, (request, body) in enumerate(zip(received, bodies, strict=True), start=1):
        assert list(request.json) == BODY_KEYS
        assert request.headers["momento-signature"] == independent_signature(secret, request.body)
        assert request.headers["user-agent"] == USER_AGENT
        assert request.headers["content-type"] == "application/json"
        assert body["cache"] == CACHE
        assert body["topic"] == topic
        assert body["text"] == f"msg-{n}"
        assert body["topic_sequence_number"] == n
        assert body["token_id"] == ""
        assert before_ms <= body["event_timestamp"] <= body["publish_timestamp"]
    assert stats_when(emu, topic, "delivered", 3).delivered == 3


def test_wrong_secret_does_not_verify_and_rotation_takes_effect_at_once(
    emu: EmulatorServer, sink: WebhookSink
) -> None:
    topic = unique("rotate")
    admin = httpx.Client(base_url=emu.admin_url or "", timeout=5)
    with admin:
        made = admin.put(f"/webhooks/{CACHE}/{topic}", json={"url": sink.url})
        assert made.status_code == 200
        old = made.json()["secret"]
        assert admin.get(f"/webhooks/{CACHE}/{topic}/secret").json()["secret"] == old
        listed = admin.get("/webhooks").json()
        assert {"cache": CACHE, "topic": topic, "url": sink.url} in listed
        assert all("secret" not in hook for hook in listed)
        publish_all(emu, topic, 1)
        first = sink.wait_for(1)[0]
        new = admin.post(f"/webhooks/{CACHE}/{topic}/rotate-secret").json()["secret"]
        publish_all(emu, topic, 1)
        second = sink.wait_for(2)[1]
        assert admin.delete(f"/webhooks/{CACHE}/{topic}").status_code == 204
        assert admin.delete(f"/webhooks/{CACHE}/{topic}").status_code == 404
        publish_all(emu, topic, 1)
    assert new != old
    assert first.headers["momento-signature"] == independent_signature(old, first.body)
    assert second.headers["momento-signature"] == independent_signature(new, second.body)
    assert second.headers["momento-signature"] != independent_signature(old, second.body)
    time.sleep(0.3)
    assert len(sink.received) == 2, "a deleted webhook still received a delivery"


@pytest.mark.timeout(60)
def test_slow_endpoint_is_abandoned_after_5_s_and_not_retried(emu: EmulatorServer) -> None:
    topic = unique("slow")
    with WebhookSink(delay_s=7.0) as slow:
        emu.register_webhook(CACHE, topic, slow.url, secret="s3cret")
        started = time.monotonic()
        publish_all(emu, topic, 1)
        assert len(slow.wait_for(1)) == 1
        while emu.webhook_stats(CACHE, topic).timed_out == 0 and time.monotonic() - started < 10:
            time.sleep(0.05)
        gave_up_after_s = time.monotonic() - started
        time.sleep(2.5)
        stats = emu.webhook_stats(CACHE, topic)
        requests = len(slow.received)
    assert stats.timed_out == 1
    assert stats.attempted == 1
    assert stats.delivered == 0
    assert 4.9 <= gave_up_after_s < 6.5
    assert requests == 1, "a timed-out delivery was retried"


def test_drop_fault_drops_the_seeded_fraction_and_only_those(
    emu: EmulatorServer, sink: WebhookSink
) -> None:
    topic = unique("drop")
    spec = emu.set_faults(CACHE, topic, drop=0.5)
    emu.register_webhook(CACHE, topic, sink.url)
    plan: FaultPlan[int] = FaultPlan(spec, derive_seed(SEED, CACHE, topic))
    expected = [n for n in range(1, 61) if plan.decide().copies]
    publish_all(emu, topic, 60)
    sink.wait_for(len(expected))
    time.sleep(0.3)
    got = sorted(r.json["topic_sequence_number"] for r in sink.received)
    assert got == expected
    assert 15 <= len(expected) <= 45
    assert emu.webhook_stats(CACHE, topic).dropped == 60 - len(expected)


def test_delay_fault_delays_each_delivery(emu: EmulatorServer, sink: WebhookSink) -> None:
    topic = unique("delay")
    emu.set_faults(CACHE, topic, delay_ms=400)
    emu.register_webhook(CACHE, topic, sink.url)
    started = time.monotonic()
    publish_all(emu, topic, 3)
    received = sink.wait_for(3)
    assert len(received) == 3
    for request in received:
        body = request.json
        assert body["publish_timestamp"] - body["event_timestamp"] >= 400
    assert min(r.at for r in received) - started >= 0.4


def test_duplicate_fault_delivers_twice(emu: EmulatorServer, sink: WebhookSink) -> None:
    topic = unique("dup")
    emu.set_faults(CACHE, topic, duplicate=1.0)
    emu.register_webhook(CACHE, topic, sink.url)
    publish_all(emu, topic, 5)
    received = sink.wait_for(10)
    numbers = sorted(r.json["topic_sequence_number"] for r in received)
    assert numbers == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert emu.webhook_stats(CACHE, topic).duplicated == 5


def test_reorder_fault_shuffles_within_the_window(emu: EmulatorServer, sink: WebhookSink) -> None:
    topic = unique("reorder")
    spec = emu.set_faults(CACHE, topic, reorder_window=5)
    emu.register_webhook(CACHE, topic, sink.url)
    plan: FaultPlan[int] = FaultPlan(spec, derive_seed(SEED, CACHE, topic))
    predicted = [n for seq in range(1, 21) for n in plan.reorder(seq)]
    publish_all(emu, topic, 20)
    received = [r.json["topic_sequence_number"] for r in sink.wait_for(20)]
    assert received == predicted
    assert received != list(range(1, 21))
    for window in range(4):
        chunk = received[window * 5 : window * 5 + 5]
        assert sorted(chunk) == list(range(window * 5 + 1, window * 5 + 6)), "left its window"


def test_reset_fault_and_forced_reset_restart_numbering(
    emu: EmulatorServer, sink: WebhookSink
) -> None:
    topic = unique("reset")
    emu.set_faults(CACHE, topic, spec=FaultSpec(reset_every=3))
    emu.register_webhook(CACHE, topic, sink.url)
    publish_all(emu, topic, 7)
    received = sink.wait_for(7)
    by_text = {r.json["text"]: r.json["topic_sequence_number"] for r in received}
    assert len(received) == 7
    assert [by_text[f"msg-{i}"] for i in range(1, 8)] == [1, 2, 3, 1, 2, 3, 1]
    emu.clear_faults()
    other = unique("forced")
    with httpx.Client(base_url=emu.admin_url or "", timeout=5) as admin:
        publish_all(emu, other, 2)
        page_before = emu.store.topic(CACHE, other).page
        reset = admin.post(f"/topics/{CACHE}/{other}/reset").json()
    assert reset["sequence_page"] != page_before
    assert emu.store.topic(CACHE, other).last_sequence == 0


def test_registrations_file_and_admin_faults(tmp_path: Path, sink: WebhookSink) -> None:
    config = tmp_path / "hooks.toml"
    config.write_text(
        f'caches = ["{CACHE}"]\n'
        f'[[webhooks]]\ncache = "{CACHE}"\ntopic = "from-file"\nurl = "{sink.url}"\n'
        f'secret = "file-secret"\n'
        f'[[faults]]\ncache = "{CACHE}"\ntopic = "noisy-*"\ndrop = 1.0\n'
    )
    with EmulatorServer(port=0) as server:
        made = apply_registrations(server, load_registrations(config))
        assert [secret for _, secret in made] == ["file-secret"]
        publish_all(server, "from-file", 1)
        received = sink.wait_for(1)
        with httpx.Client(base_url=server.admin_url or "", timeout=5) as admin:
            faults = admin.get("/faults").json()
            bad = admin.put(f"/faults/{CACHE}/x", json={"drop": 2})
            unknown = admin.put(f"/faults/{CACHE}/x", json={"explode": 1})
            good = admin.put(f"/faults/{CACHE}/x", json={"delay_ms": 5})
    assert received[0].headers["momento-signature"] == independent_signature(
        "file-secret", received[0].body
    )
    assert faults == [{"cache": CACHE, "topic": "noisy-*", **FaultSpec(drop=1.0).to_dict()}]
    assert bad.status_code == 400
    assert unknown.status_code == 400
    assert good.json()["delay_ms"] == 5
