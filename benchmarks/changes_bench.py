"""Change-record benchmark: DynamoDB stream records → POST /changes → broker → worker → Postgres
(and, with a route, → the local Momento server's cache), on one machine.

Two phases, each against a fresh receiver, worker(s) and local Momento server over the same
embedded (or configured, DATABASE_URL / CELERY_BROKER_URL) stores:

1. throughput: ``--records`` DynamoDB records (``--batch`` per request, as a pipe batches them,
   ``--items`` distinct items modified in turn) sent as fast as ``--concurrency`` keep-alive
   connections allow, no route matching them: how fast change records are persisted (stored,
   guarded per item) end to end.
2. latency: one record per request at ``--rate`` records/s for ``--seconds``, a route writing each
   item to the cache: from the moment the client sends a record to the moment the cache set was
   accepted by the Momento server (the outbox row's ``sent_at``, stamped by Postgres after the
   SDK's set returned), joined by eventID.

    .venv/bin/python benchmarks/changes_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ingest_bench import (  # noqa: E402
    free_port,
    http_ok,
    machine_notes,
    read_response,
    start,
    stop,
    wait_until,
    worker_pings,
)

SOURCE, TABLE, CACHE = "dynamodb", "bench-users", "bench-users"
LOAD_TABLE = "bench-load"
"""The throughput phase's table: its items are not the latency phase's, whose (lower) sequence
numbers would otherwise all be older than what is stored, and rightly never applied."""
ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/{table}/stream/2026-12-01T00:00:00.000"
API_KEY = secrets.token_hex(16)
ROUTES = f"""
[[routes]]
name = "bench-users"
changes = "{SOURCE}:{TABLE}"
cache_set = {{ cache = "{CACHE}", key = "{{keys.id}}", ttl_seconds = 600 }}
"""


def record(run: str, seq: int, item: int, table: str = TABLE) -> dict[str, object]:
    """A MODIFY of item ``item`` with stream sequence number ``seq`` (NEW_AND_OLD_IMAGES)."""
    key = {"id": {"S": f"user-{item}"}}
    image = key | {"name": {"S": f"name {seq}"}, "score": {"N": f"{seq}.5"}}
    return {
        "eventID": f"{run}-{seq}",
        "eventName": "MODIFY",
        "eventSource": "aws:dynamodb",
        "eventSourceARN": ARN.format(table=table),
        "dynamodb": {
            "ApproximateCreationDateTime": int(time.time()),
            "Keys": key,
            "NewImage": image,
            "OldImage": image,
            "SequenceNumber": str(10**20 + seq),
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }


def http_request(port: int, body: bytes) -> bytes:
    head = (
        f"POST /changes/{SOURCE} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\nx-api-key: {API_KEY}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Sent:
    """What the client did: statuses, and when each record (by eventID) was sent."""

    statuses: dict[int, int] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    started: float = 0.0
    duration_s: float = 0.0


async def lane(
    port: int, queue: asyncio.Queue[tuple[float, list[str], bytes]], sent: Sent
) -> None:
    """One keep-alive connection sending queued requests, each not before its start time."""
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while True:
        try:
            at, ids, request = queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        delay = at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            if streams is None:
                streams = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = streams
            now = time.time()
            writer.write(request)
            status = await read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            sent.errors += 1
            streams = None
            continue
        sent.statuses[status] = sent.statuses.get(status, 0) + 1
        for event_id in ids:
            sent.sent_at[event_id] = now
    if streams is not None:
        streams[1].close()


def send(port: int, requests: list[tuple[float, list[str], bytes]], concurrency: int) -> Sent:
    sent = Sent()

    async def main() -> None:
        queue: asyncio.Queue[tuple[float, list[str], bytes]] = asyncio.Queue()
        for request in requests:
            queue.put_nowait(request)
        await asyncio.gather(*(lane(port, queue, sent) for _ in range(concurrency)))

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    sent.started = time.time()
    asyncio.run(main())
    sent.duration_s = time.time() - sent.started
    return sent


def count(database_url: str, sql: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


@contextlib.contextmanager
def pipeline(args: argparse.Namespace, env: dict[str, str], home: Path, name: str):  # type: ignore[no-untyped-def]
    """A receiver and ``--workers`` workers (ingest queue), stopped on exit; yields the port."""
    python = [sys.executable, "-m", "pipeline.cli"]
    port = free_port()
    processes = [start(f"{name}-receiver", [*python, "receiver", "--port", str(port)], env, home)]
    for index in range(args.workers):
        argv = [*python, "worker", "-Q", "ingest,publish", "-n", f"{name}{index}@%h"]
        argv += ["-c", str(args.worker_concurrency)]
        processes.append(start(f"{name}-worker{index}", argv, env, home))
    try:
        wait_until(lambda: http_ok(port, "/healthz"), 30, "receiver")
        wait_until(lambda: worker_pings(env["CELERY_BROKER_URL"], args.workers), 60, "workers")
        yield port
    finally:
        for process in reversed(processes):
            stop(process)


def throughput(args: argparse.Namespace, env: dict[str, str], home: Path, db_url: str) -> None:
    run = f"t{int(time.time())}"
    records = [
        record(run, seq, seq % args.items, LOAD_TABLE) for seq in range(1, args.records + 1)
    ]
    with pipeline(args, env, home, "throughput") as port:
        requests = []
        for i in range(0, len(records), args.batch):
            batch = records[i : i + args.batch]
            body = json.dumps(batch, separators=(",", ":")).encode()
            requests.append((0.0, [str(r["eventID"]) for r in batch], http_request(port, body)))
        sent = send(port, requests, args.concurrency)
        query = f"SELECT count(*) FROM change_records WHERE idempotency_key LIKE 'ddb:{run}-%'"
        deadline = time.monotonic() + args.drain_timeout
        stored = 0
        while time.monotonic() < deadline:
            stored = count(db_url, query)
            if stored >= len(sent.sent_at):
                break
            time.sleep(0.1)
        done_s = time.time() - sent.started
    accepted = len(sent.sent_at)
    print()
    print(f"throughput: {args.records:,} records, {args.batch} per request, "
          f"{args.items:,} items, concurrency {args.concurrency}, no route")  # fmt: skip
    print(f"  answers            {sent.statuses}  transport errors {sent.errors}")
    print(f"  accepted           {accepted:,} records in {sent.duration_s:.1f} s "
          f"({accepted / sent.duration_s:,.0f} records/s acked)")  # fmt: skip
    print(f"  persisted          {stored:,} records in {done_s:.1f} s from the first request: "
          f"{stored / done_s:,.0f} records/s end to end")  # fmt: skip


def latency(args: argparse.Namespace, env: dict[str, str], home: Path, db_url: str) -> None:
    run = f"l{int(time.time())}"
    total = int(args.rate * args.seconds)
    with pipeline(args, env, home, "latency") as port:
        t0 = time.time() + 0.5
        requests = []
        for seq in range(1, total + 1):
            body = json.dumps(record(run, seq, seq % args.items), separators=(",", ":")).encode()
            requests.append((t0 + seq / args.rate, [f"{run}-{seq}"], http_request(port, body)))
        sent = send(port, requests, args.concurrency)
        query = (
            "SELECT count(*) FROM outbox o JOIN change_records r ON r.id = o.event_id "
            f"WHERE r.idempotency_key LIKE 'ddb:{run}-%' AND o.status = 'sent'"
        )
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline and count(db_url, query) < len(sent.sent_at):
            time.sleep(0.2)
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT substr(r.idempotency_key, 5) AS event_id, "
                "extract(epoch FROM o.sent_at) AS sent_at FROM outbox o "
                "JOIN change_records r ON r.id = o.event_id "
                "WHERE r.idempotency_key LIKE :run AND o.status = 'sent'"
            ),
            {"run": f"ddb:{run}-%"},
        ).all()
    engine.dispose()
    visible = [
        (float(row.sent_at) - sent.sent_at[row.event_id]) * 1000
        for row in rows
        if row.event_id in sent.sent_at
    ]
    achieved = len(sent.sent_at) / sent.duration_s
    print()
    print(f"latency: {total:,} records, one per request, at {args.rate:g}/s for "
          f"{args.seconds:g} s ({achieved:,.0f}/s achieved), route: cache_set on the local "
          "Momento server")  # fmt: skip
    print(f"  answers            {sent.statuses}  transport errors {sent.errors}")
    print(f"  in the cache       {len(visible):,} of {len(sent.sent_at):,} records")
    print(f"  record → cache     p50 {percentile(visible, 0.5):.1f} ms  "
          f"p90 {percentile(visible, 0.9):.1f} ms  p99 {percentile(visible, 0.99):.1f} ms  "
          f"max {max(visible, default=float('nan')):.1f} ms")  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000, help="throughput phase")
    parser.add_argument("--batch", type=int, default=10, help="records per request (phase 1)")
    parser.add_argument("--items", type=int, default=1_000, help="distinct items")
    parser.add_argument("--concurrency", type=int, default=32, help="open connections")
    parser.add_argument("--rate", type=float, default=500, help="records/s (latency phase)")
    parser.add_argument("--seconds", type=float, default=20, help="latency phase length")
    parser.add_argument("--workers", type=int, default=1, help="`pipeline worker` processes")
    parser.add_argument("--worker-concurrency", type=int, default=2, help="per worker (-c)")
    parser.add_argument("--drain-timeout", type=float, default=120)
    parser.add_argument("--keep-home", action="store_true", help="keep logs and data")
    parser.add_argument("--phase", choices=["both", "throughput", "latency"], default="both")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    from pipeline.cli import migrate
    from pipeline.config import Settings
    from pipeline.stores import running_services

    home = Path(tempfile.mkdtemp(prefix="changes-bench-"))
    emulator: subprocess.Popen[bytes] | None = None
    try:
        settings = Settings(
            database_url=os.environ.get("DATABASE_URL") or None,
            celery_broker_url=os.environ.get("CELERY_BROKER_URL") or None,
            pipeline_home=home,
        )
        with running_services(settings) as urls:
            migrate.upgrade(Settings(database_url=urls.database_url, pipeline_home=home))
            for note in machine_notes(urls.database_url, urls.broker_url):
                print(note)
            momento_port = free_port()
            emulator_argv = [sys.executable, "-m", "pipeline.cli", "emulator"]
            emulator_argv += ["--port", str(momento_port), "--admin-port", str(free_port())]
            emulator = start("momento", emulator_argv, dict(os.environ), home)
            routes = home / "routes.toml"
            env = dict(os.environ) | {
                "DATABASE_URL": urls.database_url,
                "CELERY_BROKER_URL": urls.broker_url,
                "PIPELINE_HOME": str(home),
                "PIPELINE_CHANGE_API_KEYS": API_KEY,
                "PIPELINE_WEBHOOK_SECRETS": secrets.token_hex(16),  # the receiver needs one
                "PIPELINE_ROUTES": str(routes),
                "MOMENTO_LOCAL": f"127.0.0.1:{momento_port}",
                "PIPELINE_PUBLISH_RATE_PER_S": "10000",
            }
            if args.phase in ("both", "throughput"):
                routes.write_text("# no routes: change records are persisted, not routed\n")
                throughput(args, env, home, urls.database_url)
            if args.phase in ("both", "latency"):
                routes.write_text(ROUTES)
                from pipeline.outbound import momento_client

                client = momento_client.cache_client(
                    Settings(momento_local=f"127.0.0.1:{momento_port}")
                )
                ready = lambda: momento_client.create_cache(client, CACHE) or True  # noqa: E731
                wait_until(ready, 30, "local Momento server")
                momento_client.close_client(client)
                latency(args, env, home, urls.database_url)
            print(f"load average       {os.getloadavg()[0]:.2f} at the end (2 cores)")
    finally:
        if emulator is not None:
            stop(emulator)
        if args.keep_home:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
