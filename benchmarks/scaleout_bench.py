"""Scale-out benchmark: receiver + N `pipeline worker` processes sharing only broker and Postgres.

For each N in ``--workers`` (fresh Postgres, broker and local Momento server each time), sends
signed webhooks for many topics with exact duplicate deliveries and reordering to `pipeline
receiver`; an ordered route (cache "scale", topic "t-*", tasks.examples:uppercase) relays each
topic to "{topic}-out". Measures the time until every distinct event is stored and until every
outbox row is sent, checks rows == distinct events (none duplicated, none lost), outbox sent ==
distinct events, and that subscribed outbound topics arrive complete and in sequence order.

    .venv/bin/python benchmarks/scaleout_bench.py --events 50000 --workers 1,2,3

Every process runs on this one machine, so the curve is bounded by its cores, not by the design.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ingest_bench import (  # noqa: E402
    WEBHOOK_PATH,
    cpu_model,
    free_port,
    keepalive_lane,
    sign,
    stop,
)
from benchmarks.ingest_bench import start as spawn  # noqa: E402

CACHE = "scale"
ROUTES = """
[[routes]]
name = "scale"
cache = "scale"
topic = "t-*"
workflow = "tasks.examples:uppercase"
ordered = true
publish = { cache = "{cache}", topic = "{topic}-out" }
"""


@dataclass
class Result:
    """One run's numbers."""

    workers: int
    deliveries: int
    distinct: int
    send_s: float = 0.0
    rejected: int = 0
    stored_s: float | None = None
    sent_s: float | None = None
    rows: int = 0
    distinct_rows: int = 0
    outbox_sent: int = 0
    outbox_rows: int = 0
    lost_ranges: int = 0
    sampled: int = 0
    incomplete: list[str] = field(default_factory=list)
    order_violations: int = 0
    outbound_duplicates: int = 0


# -- load ----------------------------------------------------------------------------------------


def delivery_order(
    topics: int, per_topic: int, dup: float, window: int, rng: random.Random
) -> list[tuple[int, int]]:
    """(topic index, sequence number) per delivery: interleaved over topics, ``dup`` of them
    delivered twice, shuffled within consecutive groups of ``window`` deliveries."""
    out: list[tuple[int, int]] = []
    for seq in range(1, per_topic + 1):
        for t in range(topics):
            out.append((t, seq))
            if rng.random() < dup:
                out.append((t, seq))
    for start in range(0, len(out), window):
        chunk = out[start : start + window]
        rng.shuffle(chunk)
        out[start : start + window] = chunk
    return out


def webhook_request(body: bytes, secret: str) -> bytes:
    """The whole HTTP/1.1 request of one webhook delivery, signed like Momento signs it."""
    return (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"content-type: application/json\r\nmomento-signature: {sign(body, secret)}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


def make_deliveries(
    topics: int, per_topic: int, dup: float, window: int, secret: str, rng: random.Random
) -> list[bytes]:
    """Signed webhook requests in ``delivery_order``; a duplicate is the same bytes again.

    Sequence numbers run 1..per_topic per topic; event times grow with them (1 ms apart, ending
    now), so nothing looks like a sequence reset.
    """
    base = int(time.time() * 1000) - per_topic
    requests: dict[tuple[int, int], bytes] = {}
    out = []
    for t, seq in delivery_order(topics, per_topic, dup, window, rng):
        if (t, seq) not in requests:
            body = json.dumps(
                {
                    "cache": CACHE,
                    "topic": f"t-{t}",
                    "event_timestamp": base + seq - 2,
                    "publish_timestamp": base + seq,
                    "topic_sequence_number": seq,
                    "token_id": "",
                    "text": f"m t-{t} {seq}",
                },
                separators=(",", ":"),
            ).encode()
            requests[(t, seq)] = webhook_request(body, secret)
        out.append(requests[(t, seq)])
    return out


def send(port: int, requests: list[bytes], concurrency: int) -> list[int]:
    """POST every request once over ``concurrency`` keep-alive connections; the status codes
    (0 where the connection failed)."""
    todo = iter(enumerate(requests))  # the lanes share one iterator: sent in list order
    statuses: dict[int, int] = {}

    async def main() -> None:
        lanes = (keepalive_lane(port, todo, statuses, []) for _ in range(concurrency))
        await asyncio.gather(*lanes)

    asyncio.run(main())
    return [statuses.get(i, 0) for i in range(len(requests))]


# -- processes -----------------------------------------------------------------------------------


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> float:
    """Poll until true; the monotonic time it became true. SystemExit on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return time.monotonic()
        time.sleep(interval_s)
    raise TimeoutError(f"{what} within {timeout_s:.0f} s")


def http_ok(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return sock.recv(64).startswith(b"HTTP/1.1 200")


def worker_count(broker_url: str) -> int:
    from pipeline.celery_app import configure, create_app
    from pipeline.config import Settings

    app = create_app()
    configure(app, Settings(celery_broker_url=broker_url))
    app.conf.broker_read_url = app.conf.broker_write_url = broker_url
    try:
        return len(app.control.ping(timeout=0.5) or [])
    finally:
        app.close()


# -- one run -------------------------------------------------------------------------------------


def run_once(args: argparse.Namespace, workers: int) -> Result:
    """Fresh services, receiver, emulator and ``workers`` workers; send, wait, check."""
    from sqlalchemy import create_engine, text

    from pipeline.cli import migrate
    from pipeline.config import Settings
    from pipeline.outbound import momento_client as mc
    from pipeline.outbound.subscriptions import Message, ResilientSubscription
    from pipeline.stores import running_services

    home = Path(tempfile.mkdtemp(prefix=f"scaleout-{workers}-"))
    processes: list[subprocess.Popen[bytes]] = []
    subs: list[tuple[str, Any]] = []
    client = None
    try:
        with running_services(Settings(pipeline_home=home)) as urls:
            migrate.upgrade(Settings(database_url=urls.database_url, pipeline_home=home))
            secret = secrets.token_hex(16)
            routes = home / "routes.toml"
            routes.write_text(ROUTES)
            emu_port, port = free_port(), free_port()
            env = dict(os.environ) | {
                "DATABASE_URL": urls.database_url,
                "CELERY_BROKER_URL": urls.broker_url,
                "PIPELINE_HOME": str(home),
                "MOMENTO_LOCAL": f"127.0.0.1:{emu_port}",
                "PIPELINE_WEBHOOK_SECRETS": secret,
                "PIPELINE_ROUTES": str(routes),
                # Bodies are signed just before sending; a slow run must not turn them stale.
                "PIPELINE_REPLAY_WINDOW_S": "3600",
                # The global outbound limit (default 100/s, a Momento quota) would be the
                # bottleneck measured, not the pipeline.
                "PIPELINE_PUBLISH_RATE_PER_S": str(args.publish_rate),
            }
            python = [sys.executable, "-m", "pipeline.cli"]
            emu_argv = [*python, "emulator", "--port", str(emu_port), "--no-admin"]
            emu_argv += ["--idle-reset-s", "0", "--cache", CACHE]
            processes.append(spawn("emulator", emu_argv, env, home))
            processes.append(
                spawn("receiver", [*python, "receiver", "--port", str(port)], env, home)
            )
            for index in range(workers):
                argv = [*python, "worker", "-n", f"scale{index}@%h", "-l", "WARNING"]
                argv += ["-c", str(args.worker_concurrency)]
                processes.append(spawn(f"worker{index}", argv, env, home))
            wait_until(lambda: http_ok(port), 60, "receiver up")
            wait_until(lambda: worker_count(urls.broker_url) >= workers, 90, "workers up", 0.5)
            settings = Settings(momento_local=f"127.0.0.1:{emu_port}", momento_api_key=None)
            client = mc.topic_client(settings)
            for t in random.Random(1).sample(range(args.topics), min(args.sample, args.topics)):
                sub = ResilientSubscription(client, CACHE, f"t-{t}-out", stall_timeout_s=60)
                subs.append((f"t-{t}", sub.start()))

            per_topic = args.events // args.topics
            rng = random.Random(args.seed)
            requests = make_deliveries(
                args.topics, per_topic, args.duplicates, args.reorder_window, secret, rng
            )
            result = Result(workers, len(requests), per_topic * args.topics)
            engine = create_engine(urls.database_url)

            def scalar(sql: str) -> int:
                with engine.connect() as conn:
                    return int(conn.execute(text(sql)).scalar_one())

            started = time.monotonic()
            statuses = send(port, requests, args.concurrency)
            result.send_s = time.monotonic() - started
            result.rejected = sum(1 for s in statuses if not 200 <= s < 300)
            received: dict[str, list[str]] = {topic: [] for topic, _ in subs}

            def drain() -> None:
                for topic, sub in subs:
                    while (event := sub.poll(0)) is not None:
                        if isinstance(event, Message):
                            received[topic].append(json.loads(str(event.value))["text"])

            def done(sql: str) -> bool:
                drain()
                return scalar(sql) >= result.distinct

            with contextlib.suppress(TimeoutError):
                stored_at = wait_until(
                    lambda: done("SELECT count(*) FROM events"), args.timeout, "stored", 0.2
                )
                result.stored_s = stored_at - started
            with contextlib.suppress(TimeoutError):
                sent_at = wait_until(
                    lambda: done("SELECT count(*) FROM outbox WHERE status = 'sent'"),
                    args.timeout,
                    "sent",
                    0.2,
                )
                result.sent_s = sent_at - started
            settle = time.monotonic() + 3.0
            while time.monotonic() < settle:
                drain()
                time.sleep(0.05)
            result.rows = scalar("SELECT count(*) FROM events")
            result.distinct_rows = scalar(
                "SELECT count(*) FROM (SELECT DISTINCT topic, topic_sequence_number FROM events) d"
            )
            result.outbox_sent = scalar("SELECT count(*) FROM outbox WHERE status = 'sent'")
            result.outbox_rows = scalar("SELECT count(*) FROM outbox")
            result.lost_ranges = scalar("SELECT count(*) FROM lost_ranges")
            engine.dispose()
            check_order(result, received, per_topic)
            return result
    finally:
        for _, sub in subs:
            sub.close()
        if client is not None:
            client.close()
        for process in reversed(processes):
            stop(process)
        if args.keep_home:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def check_order(result: Result, received: dict[str, list[str]], per_topic: int) -> None:
    """Count outbound order violations, duplicates and incomplete topics; print the first few."""
    result.sampled = len(received)
    for topic, texts in received.items():
        seqs = [int(t.rsplit(" ", 1)[1]) for t in texts]
        backwards = [(a, b) for a, b in itertools.pairwise(seqs) if b <= a]
        result.order_violations += sum(1 for a, b in backwards if b < a)
        result.outbound_duplicates += len(seqs) - len(set(seqs))
        missing = set(range(1, per_topic + 1)) - set(seqs)
        if missing:
            result.incomplete.append(f"{topic}: {len(missing)} missing")
        if backwards:
            print(f"  {topic}: out of order/duplicated at {backwards[:5]}")


# -- report --------------------------------------------------------------------------------------


def machine_notes() -> str:
    cpu = cpu_model()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.platform()}, python "
        f"{platform.python_version()}; load average before the runs: {load}"
    )


def table(results: list[Result]) -> str:
    def rate(n: int, s: float | None) -> str:
        return f"{n / s:,.0f}" if s else "timeout"

    def secs(s: float | None) -> str:
        return f"{s:.1f}" if s else "timeout"

    lines = [
        "| workers | deliveries (distinct) | acked/s | stored in s | stored events/s "
        "| outbound sent in s | outbound events/s | duplicates stored | lost | outbox sent "
        "| order violations (sampled topics) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lost = r.distinct - r.distinct_rows
        lines.append(
            f"| {r.workers} | {r.deliveries:,} ({r.distinct:,}) | {r.deliveries / r.send_s:,.0f} "
            f"| {secs(r.stored_s)} | {rate(r.distinct, r.stored_s)} | {secs(r.sent_s)} "
            f"| {rate(r.distinct, r.sent_s)} | {r.rows - r.distinct_rows} | {lost} "
            f"| {r.outbox_sent:,}/{r.outbox_rows:,} | {r.order_violations} ({r.sampled}) |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="distinct events")
    parser.add_argument("--topics", type=int, default=50)
    parser.add_argument("--workers", default="1,2,3", help="comma-separated worker counts")
    parser.add_argument("--worker-concurrency", type=int, default=2, help="per worker (-c)")
    parser.add_argument("--duplicates", type=float, default=0.05, help="fraction sent twice")
    parser.add_argument("--reorder-window", type=int, default=200, help="shuffle group size")
    parser.add_argument("--concurrency", type=int, default=32, help="client connections")
    parser.add_argument("--sample", type=int, default=10, help="outbound topics subscribed")
    parser.add_argument("--timeout", type=float, default=600, help="s to wait for each stage")
    parser.add_argument(
        "--publish-rate", type=float, default=5000, help="PIPELINE_PUBLISH_RATE_PER_S (ops/s)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep-home", action="store_true", help="keep each run's PIPELINE_HOME")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    print("command:", command, flush=True)
    print("machine:", machine_notes(), flush=True)
    results = []
    for workers in (int(n) for n in args.workers.split(",")):
        print(f"-- {workers} worker process(es) x -c {args.worker_concurrency}", flush=True)
        result = run_once(args, workers)
        print(table([result]).splitlines()[-1], flush=True)
        for line in result.incomplete:
            print("  incomplete:", line)
        results.append(result)
    print()
    print(table(results))
    ok = all(
        r.rows == r.distinct_rows == r.distinct
        and r.outbox_sent == r.outbox_rows == r.distinct
        and not r.order_violations
        and not r.incomplete
        and not r.rejected
        for r in results
    )
    print("all checks passed" if ok else "CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
