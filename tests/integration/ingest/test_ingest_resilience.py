"""The ingest path under load and failure: real receiver over HTTP, broker, workers and Postgres.

Each test answers one question a webhook sender cares about: is every event answered 2xx stored,
exactly once, whatever is down or dies meanwhile? And does no input make the receiver fail?
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import text

from pipeline.cli import migrate
from pipeline.config import Settings
from pipeline.ingest.signing import sign
from pipeline.stores import EmbeddedBroker, EmbeddedPostgres
from tests.conftest import (
    TEST_SECRET,
    ReceiverServer,
    WorkerProcess,
    count_rows,
    signed_webhook,
    wait_for,
)

WEBHOOK = "/webhooks/momento"
# No route matches this topic, so the tests measure ingest alone, not the workflows behind it.
CACHE, TOPIC = "ingest-tests", "resilience"
ERROR_CODES = {
    400: {"malformed_body", "timestamp_out_of_range"},
    401: {"bad_signature", "stale_event"},
    413: {"body_too_large"},
    415: {"unsupported_media_type"},
    503: {"broker_unavailable", "overloaded"},
}


def post_with_httpx(base_url: str, seqs: Sequence[int], connections: int) -> dict[int, int]:
    """POST one signed webhook per sequence number, all at once, with httpx.AsyncClient."""

    async def run() -> dict[int, int]:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

            async def post(seq: int) -> int:
                body, headers = signed_webhook(seq, cache=CACHE, topic=TOPIC)
                return (await client.post(WEBHOOK, content=body, headers=headers)).status_code

            return dict(zip(seqs, await asyncio.gather(*map(post, seqs)), strict=True))

    return asyncio.run(run())


def post_concurrently(base_url: str, seqs: Sequence[int], connections: int) -> dict[int, int]:
    """POST one signed webhook per sequence number over ``connections`` keep-alive connections.

    A plain HTTP/1.1 client on asyncio streams: httpx's connection pool costs milliseconds per
    request at this concurrency, which would make the load too thin to batch. Returns the status
    by sequence number; 0 means no answer (a transport error), which is no ack.
    """
    host, port = base_url.removeprefix("http://").split(":")

    async def lane(todo: Iterator[int], statuses: dict[int, int]) -> None:
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for seq in todo:
            body, headers = signed_webhook(seq, cache=CACHE, topic=TOPIC)
            head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            request = (
                f"POST {WEBHOOK} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(body)}\r\n"
                f"{head}\r\n"
            ).encode() + body
            try:
                if streams is None:
                    streams = await asyncio.open_connection(host, int(port))
                reader, writer = streams
                writer.write(request)
                statuses[seq] = await read_status(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                statuses[seq] = 0
                streams = None
        if streams is not None:
            streams[1].close()

    async def run() -> dict[int, int]:
        statuses: dict[int, int] = {}
        todo = iter(seqs)
        await asyncio.gather(*(lane(todo, statuses) for _ in range(connections)))
        return statuses

    return asyncio.run(run())


async def read_status(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (content-length framed); return its status code."""
    status = int((await reader.readuntil(b"\r\n")).split()[1])
    length = 0
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


def acked(statuses: dict[int, int]) -> set[int]:
    """Sequence numbers answered 2xx."""
    return {seq for seq, status in statuses.items() if 200 <= status < 300}


def stored_sequence_numbers(settings: Settings) -> list[int]:
    """Every stored event's sequence number, duplicates included."""
    from pipeline.db import get_engine

    with get_engine(settings).connect() as conn:
        rows = conn.execute(text("SELECT topic_sequence_number FROM events")).scalars()
        return [int(seq) for seq in rows]


def test_1000_concurrent_requests_are_all_acked_and_stored_once(
    db: Settings,
    receiver_factory: Callable[..., ReceiverServer],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    worker_factory("burst")
    receiver = receiver_factory()
    statuses = post_with_httpx(receiver.url, range(1, 1001), connections=1000)
    assert sorted(statuses.values()) == [204] * 1000
    assert wait_for(lambda: count_rows(db, "SELECT count(*) FROM events") >= 1000, 30)
    assert sorted(stored_sequence_numbers(db)) == list(range(1, 1001))


class RestartableBroker:
    """An embedded broker of the test's own, stopped and restarted on the same port and data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = EmbeddedBroker(root, port=0)
        self.url = self.server.start()
        self.port = self.server.port

    def stop(self) -> None:
        """Stop the server (SIGTERM; the append-only file keeps what it accepted)."""
        self.server.stop()
        assert not _answers(self.url)

    def start(self) -> None:
        """Start it again where it was."""
        self.server = EmbeddedBroker(self.root, port=self.port or 0)
        assert self.server.start() == self.url


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[RestartableBroker]:
    """A broker only this test uses (requested before the workers, so stopped after them)."""
    broker = RestartableBroker(tmp_path)
    yield broker
    broker.server.stop()


@pytest.mark.timeout(180)
def test_broker_outage_answers_503_never_2xx_and_recovers_without_restart(
    own_broker: RestartableBroker,
    db: Settings,
    receiver_factory: Callable[..., ReceiverServer],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    settings = db.model_copy(update={"celery_broker_url": own_broker.url})
    receiver = receiver_factory(settings)
    statuses = post_concurrently(receiver.url, range(1, 51), connections=10)
    assert sorted(statuses.values()) == [204] * 50

    own_broker.stop()
    with httpx.Client(base_url=receiver.url, timeout=10) as client:
        body, headers = signed_webhook(100, cache=CACHE, topic=TOPIC)
        refused = client.post(WEBHOOK, content=body, headers=headers)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) > 0
    assert refused.json()["error"] == "broker_unavailable"
    during = post_concurrently(receiver.url, range(101, 141), connections=20)
    assert set(during.values()) == {503}, during
    statuses |= during | {100: refused.status_code}

    own_broker.start()
    retries = iter(range(1000, 1100))

    def recovered() -> bool:
        attempt = post_concurrently(receiver.url, [next(retries)], connections=1)
        statuses.update(attempt)
        return set(attempt.values()) == {204}

    assert wait_for(recovered, 20, 0.5), "receiver still refuses after the broker came back"
    after = post_concurrently(receiver.url, range(2001, 2051), connections=10)
    assert sorted(after.values()) == [204] * 50
    statuses |= after

    worker_factory("broker-outage", env={"CELERY_BROKER_URL": own_broker.url})
    assert wait_for(lambda: set(stored_sequence_numbers(db)) >= acked(statuses), 60)
    stored = stored_sequence_numbers(db)
    assert len(stored) == len(set(stored)), "an event was stored twice"
    # Every 2xx is stored; a 503 promised nothing, so a late send of one may land too.
    assert acked(statuses) <= set(stored) <= set(statuses)


class RestartablePostgres:
    """An embedded Postgres of the test's own, migrated, stopped and started on the same data."""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.server = EmbeddedPostgres(root)
        self.url = self.server.start()
        self.settings = settings.model_copy(update={"database_url": self.url})
        migrate.upgrade(self.settings)

    def stop(self) -> None:
        """Stop the server: this process holds the only pgserver handle, so it really stops."""
        self.server.stop()
        assert self.server.running_url() is None, "postgres still running"

    def start(self) -> None:
        """Start it again on the same data and socket."""
        self.server = EmbeddedPostgres(self.root)
        assert self.server.start() == self.url


@pytest.fixture
def own_postgres(tmp_path: Path, settings: Settings) -> Iterator[RestartablePostgres]:
    """A Postgres only this test uses (requested before the workers, so stopped after them)."""
    from pipeline.db import get_engine

    postgres = RestartablePostgres(tmp_path, settings)
    yield postgres
    get_engine(postgres.settings).dispose()
    postgres.server.stop()


@pytest.mark.timeout(180)
def test_events_posted_while_postgres_is_down_are_all_stored_after_it_returns(
    own_postgres: RestartablePostgres,
    db: Settings,
    receiver_factory: Callable[..., ReceiverServer],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    pg = own_postgres.settings
    worker_factory("pg-outage", env={"DATABASE_URL": own_postgres.url})
    receiver = receiver_factory()
    first = post_concurrently(receiver.url, range(1, 101), connections=10)
    assert sorted(first.values()) == [204] * 100
    assert wait_for(lambda: count_rows(pg, "SELECT count(*) FROM events") == 100, 30)

    own_postgres.stop()
    down = post_concurrently(receiver.url, range(101, 601), connections=20)
    assert sorted(down.values()) == [204] * 500  # the receiver needs only the broker
    time.sleep(3)  # the worker takes the batches, fails on the database and backs off

    own_postgres.start()
    assert wait_for(lambda: count_rows(pg, "SELECT count(*) FROM events") >= 600, 90, 0.5)
    assert sorted(stored_sequence_numbers(pg)) == list(range(1, 601))
    assert count_rows(pg, "SELECT count(*) FROM dead_letters") == 0


def unacked_messages(settings: Settings) -> int:
    """Messages a worker took from the broker and has not acked."""
    assert settings.celery_broker_url
    client = redis.Redis.from_url(settings.celery_broker_url)
    try:
        return int(client.hlen("unacked"))
    finally:
        client.close()


def kill_holding_a_batch(worker: WorkerProcess, settings: Settings, timeout_s: float = 30) -> int:
    """SIGKILL ``worker`` at a moment it holds a batch it has not acked; return how many it held.

    The main process (which acks) is stopped first, so the count cannot change before the kill;
    if it holds none, it runs on a few ms and is tried again.
    """
    assert worker.process is not None
    pid = worker.process.pid
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        os.kill(pid, signal.SIGSTOP)
        held = unacked_messages(settings)
        if held:
            worker.kill()
            return held
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.005)
    worker.kill()
    return 0


class ReceiverProcess:
    """`pipeline receiver` in a subprocess (uvloop, as deployed): load from this process gets a
    core of its own instead of sharing the GIL with an in-process receiver."""

    def __init__(self, settings: Settings) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "receiver", "--port", str(self.port)],
            env=dict(os.environ) | {"CELERY_BROKER_URL": str(settings.celery_broker_url)},
            start_new_session=True,
        )

        def up() -> bool:
            assert self.process.poll() is None, f"receiver exited with {self.process.returncode}"
            try:
                return httpx.get(f"{self.url}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        assert wait_for(up, 20, 0.1), "receiver did not start"

    def stop(self) -> None:
        """SIGTERM (graceful: the batcher flushes), then SIGKILL if it hangs."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def receiver_process(settings: Settings) -> Iterator[ReceiverProcess]:
    """The receiver as a subprocess on the session's broker."""
    receiver = ReceiverProcess(settings)
    yield receiver
    receiver.stop()


@pytest.mark.timeout(240)
def test_worker_killed_mid_load_loses_and_duplicates_nothing_acked(
    db: Settings,
    receiver_process: ReceiverProcess,
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    total = 20_000
    first = worker_factory("doomed")
    statuses: dict[int, int] = {}

    def load() -> None:
        statuses.update(post_concurrently(receiver_process.url, range(1, total + 1), 64))

    sender = threading.Thread(target=load)
    sender.start()
    assert wait_for(lambda: count_rows(db, "SELECT count(*) FROM events") >= 2_000, 60)
    stranded = kill_holding_a_batch(first, db)
    stored_at_kill = count_rows(db, "SELECT count(*) FROM events")
    # Takes over the queue at once, and the dead worker's unacked batches once they are older
    # than the visibility timeout (10 s here; workers scan for such messages every 5 s).
    worker_factory("survivor")
    sender.join(120)
    assert not sender.is_alive()

    assert stored_at_kill < total, "the worker was not killed during the load"
    assert stranded > 0, "no batch was in flight when the worker died"
    assert sorted(statuses.values()) == [204] * total
    assert wait_for(lambda: count_rows(db, "SELECT count(*) FROM events") >= total, 90, 0.5)
    stored = stored_sequence_numbers(db)
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert set(stored) == acked(statuses)


# --- hypothesis: whatever arrives, the answer is a documented one --------------------------------

INT_FIELDS = ("topic_sequence_number", "event_timestamp", "publish_timestamp")
NAME_FIELDS = ("cache", "topic")
KNOWN_FIELDS = {*INT_FIELDS, *NAME_FIELDS, "token_id", "text"}
# Values each field must refuse (the model, written down independently of pipeline.ingest.events).
WRONG_VALUES: dict[str, list[object]] = {
    **{name: ["1", 1.5, True, None, -1, 2**63, [], {}] for name in INT_FIELDS},
    **{name: [1, None, True, [], {}, "", "x" * 256, "a\x00b", "\ud800"] for name in NAME_FIELDS},
    "token_id": [1, None, True, [], "x" * 256, "a\x00b", "\udfff"],
    "text": [1, None, True, [], {}, "nul \x00 inside", "lone \ud800 surrogate"],
}
JSON_CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "Application/JSON"]
OTHER_CONTENT_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
# Valid values: no NUL and no lone surrogates (both are among the WRONG_VALUES above).
no_nul = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
names = st.text(no_nul, min_size=1, max_size=40)
header_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)


@dataclass(frozen=True)
class Case:
    """One generated request and the answer the documented contract calls for."""

    body: bytes
    headers: list[tuple[str, str]]
    status: int
    code: str | None


@st.composite
def webhook_bodies(draw: st.DrawFn, seq: int) -> tuple[bytes, bool, bool, bool]:
    """(body, valid, fresh, plausible): a Momento-shaped body, maybe with a broken field or odd
    timing; plausible: event_timestamp within a day before and 30 s after publish_timestamp."""
    now = int(time.time() * 1000)
    offset_ms = draw(
        st.one_of(
            st.integers(-10_000, 10_000),  # well inside the window
            st.integers(-(10**9), -120_000),  # older than the 60 s replay window
            st.integers(120_000, 10**9),  # beyond the 30 s allowed future skew
        )
    )
    publish_ms = now + offset_ms
    absurd = draw(st.sampled_from([None, None, None, None, "ns", "s", "old", "ahead"]))
    event_ms = {
        None: now - draw(st.integers(0, 5_000)),
        "ns": publish_ms * 1_000_000,  # a unit mistake: nanoseconds
        "s": publish_ms // 1_000,  # seconds
        "old": publish_ms - 86_400_000 - draw(st.integers(1, 10**9)),  # over a day before
        "ahead": publish_ms + 30_000 + draw(st.integers(1, 10**9)),  # beyond the future skew
    }[absurd]
    event: dict[str, object] = {
        "cache": draw(names),
        "topic": draw(names),
        "event_timestamp": event_ms,
        "publish_timestamp": publish_ms,
        "topic_sequence_number": seq,
        "token_id": draw(st.text(no_nul, max_size=20)),
        "text": draw(st.text(no_nul, max_size=200)),
    }
    extra = st.text(max_size=10).filter(lambda k: k not in KNOWN_FIELDS)
    event |= draw(st.dictionaries(extra, json_values, max_size=3))
    valid = True
    broken = draw(st.none() | st.sampled_from(sorted(KNOWN_FIELDS)))
    if broken is not None:
        if draw(st.booleans()):
            del event[broken]
            valid = broken == "token_id"  # the only optional field
        else:
            event[broken] = draw(st.sampled_from(WRONG_VALUES[broken]))
            valid = False
    # surrogatepass: a lone surrogate sent raw is invalid UTF-8, one sent escaped is valid JSON.
    body = json.dumps(event, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    return body, valid, abs(offset_ms) <= 10_000, absurd is None


@st.composite
def requests(draw: st.DrawFn, seq: int) -> Case:
    """A request of any shape, with the answer it must get."""
    kind = draw(st.sampled_from(["webhook", "webhook", "webhook", "json", "bytes", "huge"]))
    valid = fresh = plausible = False
    if kind == "webhook":
        body, valid, fresh, plausible = draw(webhook_bodies(seq))
    elif kind == "json":
        value = draw(
            json_values.filter(lambda v: not isinstance(v, dict) or not KNOWN_FIELDS & set(v))
        )
        body = json.dumps(value).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=300))
    else:
        body, _ = signed_webhook(seq, text_value="x" * 70_000)

    signature = draw(st.sampled_from(["good", "good", "good", "other_secret", "garbage", "absent"]))
    headers: list[tuple[str, str]] = []
    if signature == "good":
        headers.append(("momento-signature", sign(body, TEST_SECRET)))
    elif signature == "other_secret":
        headers.append(("momento-signature", sign(body, "another-secret")))
    elif signature == "garbage":
        headers.append(("momento-signature", draw(header_values)))
    content_type = draw(
        st.sampled_from([*JSON_CONTENT_TYPES, *JSON_CONTENT_TYPES, *OTHER_CONTENT_TYPES, None])
        | header_values.filter(lambda v: "json" not in v.lower())
    )
    if content_type is not None:
        headers.append(("content-type", content_type))
    names = st.from_regex(r"x-[a-z0-9-]{1,16}", fullmatch=True)
    headers += draw(st.lists(st.tuples(names, header_values), max_size=3))

    # The documented order of checks: media type, size, signature, body, replay window, event time.
    if content_type not in JSON_CONTENT_TYPES:
        return Case(body, headers, 415, "unsupported_media_type")
    if len(body) > 65_536:
        return Case(body, headers, 413, "body_too_large")
    if signature != "good":
        return Case(body, headers, 401, "bad_signature")
    if not valid:
        return Case(body, headers, 400, "malformed_body")
    if not fresh:
        return Case(body, headers, 401, "stale_event")
    if not plausible:
        return Case(body, headers, 400, "timestamp_out_of_range")
    return Case(body, headers, 204, None)


def queued_bodies(settings: Settings) -> list[str]:
    """Raw webhook bodies inside every message waiting on the ingest queue."""
    assert settings.celery_broker_url
    client = redis.Redis.from_url(settings.celery_broker_url)
    try:
        messages = client.lrange("ingest", 0, -1)
    finally:
        client.close()
    bodies = []
    for message in messages:
        envelope = json.loads(message)
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        bodies += [item[0] for item in args[0]]
    return bodies


@pytest.mark.timeout(120)
def test_generated_requests_get_documented_answers_and_every_accepted_one_is_stored(
    db: Settings,
    receiver_factory: Callable[..., ReceiverServer],
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    receiver = receiver_factory()
    accepted: list[bytes] = []
    counter = iter(range(1, 10**9))

    with httpx.Client(base_url=receiver.url, timeout=10) as client:

        @hypothesis_settings(
            max_examples=150,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=st.data())
        def check(data: st.DataObject) -> None:
            case = data.draw(requests(next(counter)))
            response = client.post(WEBHOOK, content=case.body, headers=case.headers)
            assert response.status_code == case.status, response.text
            if case.status == 204:
                assert response.content == b""
                accepted.append(case.body)
                return
            assert response.headers["content-type"] == "application/json"
            error = response.json()
            assert error["error"] == case.code
            assert error["error"] in ERROR_CODES[response.status_code]
            assert isinstance(error["detail"], str)
            assert error["detail"]

        check()
        assert client.get("/healthz").json() == {"status": "ok"}

    assert accepted, "no generated request was valid: the strategy is broken"
    assert sorted(queued_bodies(db)) == sorted(body.decode() for body in accepted)
    worker_factory("generated")
    assert wait_for(lambda: count_rows(db, "SELECT count(*) FROM events") >= len(accepted), 30)
    assert count_rows(db, "SELECT count(*) FROM events") == len(accepted)
    assert count_rows(db, "SELECT count(*) FROM dead_letters") == 0
