"""End-to-end latency of a routed workflow, from SDK publish to SDK subscriber receipt.

    SDK publish → local Momento server → signed webhook → receiver → broker → ingest (store and
    sequence) → workflow (uppercase) → outbox → SDK publish → local Momento server → SDK subscriber

Every part is real and runs as it would in production, each in its own process: embedded Postgres
and Valkey, `pipeline emulator`, `pipeline receiver`, `pipeline worker`. The benchmark process
publishes at a fixed rate (open loop: a slow pipeline does not slow the publisher down) and
subscribes to the outbound topic; each message carries its publish time, so latency is measured
on one clock.

    .venv/bin/python benchmarks/e2e_latency.py                     # 200 events/s for 20 s, ordered
    .venv/bin/python benchmarks/e2e_latency.py --rate 200 --seconds 30 --unordered
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
import httpx
import psutil

from pipeline.cli import migrate
from pipeline.config import Settings
from pipeline.outbound import momento_client as mc
from pipeline.outbound.subscriptions import Message, ResilientSubscription
from pipeline.stores import running_services

CACHE, INBOUND, OUTBOUND = "bench", "in", "out"
SECRET = "benchmark-secret-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not come up within {timeout_s} s")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Processes:
    """Child processes, each in its own session, stopped in reverse order."""

    def __init__(self, env: dict[str, str], verbose: bool) -> None:
        self.env = env
        self.verbose = verbose
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> None:
        command = [sys.executable, "-m", "pipeline.cli", *args]
        self.children.append(
            subprocess.Popen(
                command,
                env=self.env,
                start_new_session=True,
                stdout=None if self.verbose else subprocess.DEVNULL,
                stderr=None if self.verbose else subprocess.DEVNULL,
            )
        )

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        for child in reversed(self.children):
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def process_roles(home: Path, children: list[subprocess.Popen[bytes]]) -> dict[str, list[int]]:
    """Pids by role, for the CPU breakdown: our children, the stores, this process."""
    roles: dict[str, list[int]] = {"benchmark": [os.getpid()]}
    names = ["emulator", "receiver"] + ["workers"] * (len(children) - 2)
    for name, child in zip(names, children, strict=True):
        roles.setdefault(name, []).append(child.pid)
    for name, pidfile in (("postgres", "postgres/postmaster.pid"), ("valkey", "valkey/valkey.pid")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            roles[name] = [int((home / pidfile).read_text().split()[0])]
    return roles


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their descendants (not this one's: all are)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            family = [] if pid == os.getpid() else root.children(recursive=True)
            for proc in [root, *family]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def routes(path: Path, ordered: bool) -> Path:
    path.write_text(
        f"""
[[routes]]
name = "bench"
cache = "{CACHE}"
topic = "{INBOUND}"
workflow = "tasks.examples:uppercase"
ordered = {str(ordered).lower()}
publish = {{ cache = "{{cache}}", topic = "{OUTBOUND}" }}
"""
    )
    return path


async def publish_open_loop(address: str, rate: float, count: int) -> None:
    """Publish ``count`` messages at ``rate``/s on schedule, each carrying its send time."""
    client = mc.topic_client_async(Settings(momento_local=address), timeout=mc.PUBLISH_TIMEOUT)
    start = time.monotonic()
    pending: set[asyncio.Task[None]] = set()
    try:
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            text = f"event {i} {time.monotonic_ns()} {time.time_ns() // 1000}"
            task = asyncio.create_task(mc.publish_async(client, CACHE, INBOUND, text))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
    finally:
        await client.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


@click.command()
@click.option("--rate", default=200.0, show_default=True, help="Events published per second.")
@click.option("--seconds", default=20.0, show_default=True, help="Measured publishing time.")
@click.option("--warmup-s", default=3.0, show_default=True, help="Publishing before measuring.")
@click.option("--workers", default=1, show_default=True, help="`pipeline worker` processes.")
@click.option("--concurrency", default=2, show_default=True, help="Pool size per worker.")
@click.option("--pool", default="prefork", show_default=True, help="Celery pool of the workers.")
@click.option("--unordered", is_flag=True, help="Route without ordered = true.")
@click.option(
    "--timeline",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write each event's stage timestamps to this CSV file.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show the children's output.")
@click.option("--keep-home", is_flag=True, help="Keep the temporary PIPELINE_HOME (logs, data).")
def main(
    rate: float,
    seconds: float,
    warmup_s: float,
    workers: int,
    concurrency: int,
    pool: str,
    unordered: bool,
    timeline: Path | None,
    verbose: bool,
    keep_home: bool,
) -> None:
    """Measure publish → subscriber latency through the whole pipeline."""
    home = Path(tempfile.mkdtemp(prefix="bench-home-"))
    try:
        settings = Settings(pipeline_home=home, database_url=None, celery_broker_url=None)
        with running_services(settings) as urls:
            migrate.upgrade(settings.model_copy(update={"database_url": urls.database_url}))
            grpc_port, receiver_port = free_port(), free_port()
            address = f"127.0.0.1:{grpc_port}"
            hook = f"{CACHE}:{INBOUND}=http://127.0.0.1:{receiver_port}/webhooks/momento"
            env = dict(os.environ) | {
                "DATABASE_URL": urls.database_url,
                "CELERY_BROKER_URL": urls.broker_url,
                "PIPELINE_HOME": str(home),
                "MOMENTO_LOCAL": address,
                "PIPELINE_WEBHOOK_SECRETS": SECRET,
                "PIPELINE_ROUTES": str(routes(home / "routes.toml", not unordered)),
                "PIPELINE_PUBLISH_RATE_PER_S": str(max(1000.0, 5 * rate)),
            }
            children = Processes(env, verbose)
            try:
                children.start(
                    "emulator", "--port", str(grpc_port), "--no-admin", "--idle-reset-s", "0",
                    "--cache", CACHE, "--webhook", hook, "--webhook-secret", SECRET,
                )  # fmt: skip
                wait_until(lambda: port_open(grpc_port), 30, "emulator")
                children.start("receiver", "--port", str(receiver_port))
                ready = f"http://127.0.0.1:{receiver_port}/readyz"
                wait_until(lambda: httpx.get(ready).status_code == 200, 30, "receiver")
                for n in range(workers):
                    children.start(
                        "worker",
                        "-c",
                        str(concurrency),
                        "-P",
                        pool,
                        "-n",
                        f"bench{n}@%h",
                        "-l",
                        os.environ.get("BENCH_WORKER_LOGLEVEL", "WARNING"),
                    )
                time.sleep(5)  # workers connect, fork their pools and warm up
                gc.collect()
                gc.freeze()  # this process's own collector pauses would count as pipeline latency
                roles = process_roles(home, children.children)
                before = {role: cpu_seconds(pids) for role, pids in roles.items()}
                latencies = measure(address, rate, seconds, warmup_s)
                stages = stage_medians(urls.database_url, int(rate * warmup_s), timeline)
                events = rate * (seconds + warmup_s)
                cpu_ms = {
                    role: (cpu_seconds(pids) - before[role]) * 1000 / events
                    for role, pids in roles.items()
                }
            finally:
                children.stop()
        report(latencies, rate, seconds, workers, concurrency, unordered)
        breakdown = "  ".join(f"{role} {ms:.1f}" for role, ms in cpu_ms.items())
        print(f"cpu ms/event {breakdown}  (total {sum(cpu_ms.values()):.1f})")
        per_batch = stages.pop("(events per ingest batch")
        print("stage p50 ms " + "  ".join(f"{name} {ms:.1f}" for name, ms in stages.items()))
        print(f"batches      {per_batch:.2f} events per ingest batch (group commit)")
        print(
            f"load avg     {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work on the box)"
        )
    finally:
        if keep_home:
            print(f"kept {home}")
        else:  # its Postgres and broker data: ~80 MB a run
            shutil.rmtree(home, ignore_errors=True)


def measure(address: str, rate: float, seconds: float, warmup_s: float) -> dict[int, list[float]]:
    """Publish and collect; returns latencies (ms) by message index (more than one: duplicates)."""
    warmup, measured = int(rate * warmup_s), int(rate * seconds)
    total = warmup + measured
    received: dict[int, list[float]] = {}
    client = mc.topic_client(Settings(momento_local=address))
    sub = ResilientSubscription(client, CACHE, OUTBOUND).start()
    done = threading.Event()

    def collect() -> None:
        while not done.is_set():
            event = sub.poll(0.2)
            if isinstance(event, Message):
                now_ns = time.monotonic_ns()
                _, index, sent_ns, _ = json.loads(str(event.value))["text"].split()
                received.setdefault(int(index), []).append((now_ns - int(sent_ns)) / 1e6)

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        asyncio.run(publish_open_loop(address, rate, total))
        deadline = time.monotonic() + 30
        while sum(1 for i in received if i >= warmup) < measured and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        done.set()
        reader.join(5)
        sub.close()
        client.close()
    return {i: v for i, v in received.items() if i >= warmup}


STAGES_SQL = """
SELECT e.text,
       extract(epoch FROM e.received_at) * 1e6 AS received_us,
       extract(epoch FROM e.stored_at) * 1e6 AS stored_us,
       extract(epoch FROM o.created_at) * 1e6 AS committed_us,
       extract(epoch FROM o.sent_at) * 1e6 AS sent_us
FROM events e JOIN outbox o ON o.event_id = e.id
WHERE o.sent_at IS NOT NULL
"""


def stage_medians(database_url: str, warmup: int, timeline: Path | None = None) -> dict[str, float]:
    """Where the time goes, from the rows' timestamps (one wall clock: this machine's).

    ``timeline``: also write each event's timestamps there (CSV, ms after the first publish), to
    find which stage a stall began in.
    """
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    spans: dict[str, list[float]] = {
        "webhook": [],  # SDK publish -> local Momento -> signed POST -> receiver
        "to_stored": [],  # receiver -> broker -> ingest task -> its transaction starts
        "to_result": [],  # ingest commit -> hand-over -> workflow ran -> result committed
        "to_sent": [],  # result committed -> sender thread publishes -> marked by a later statement
    }
    lines: list[tuple[int, list[float]]] = []
    with engine.connect() as conn:
        for row in conn.execute(text(STAGES_SQL)):
            _, index, _, published_us = row.text.split()
            if int(index) < warmup:
                continue
            points = [float(published_us), row.received_us, row.stored_us]
            points = [float(p) for p in [*points, row.committed_us, row.sent_us]]
            lines.append((int(index), points))
            for name, start, end in zip(spans, points, points[1:], strict=False):
                spans[name].append((end - start) / 1000)
        events, batches = conn.execute(
            text("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM ingest_batches)")
        ).one()
    engine.dispose()
    if timeline is not None and lines:
        origin = min(points[0] for _, points in lines)
        rows = ["index,published_ms,received_ms,stored_ms,committed_ms,sent_ms"]
        for index, points in sorted(lines):
            rows.append(",".join([str(index), *(f"{(p - origin) / 1000:.2f}" for p in points)]))
        timeline.write_text("\n".join(rows) + "\n")
    medians = {name: statistics.median(values) for name, values in spans.items() if values}
    return medians | {"(events per ingest batch": events / max(1, batches)}


def report(
    latencies: dict[int, list[float]],
    rate: float,
    seconds: float,
    workers: int,
    concurrency: int,
    unordered: bool,
) -> None:
    firsts = [values[0] for values in latencies.values()]
    expected = int(rate * seconds)
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command      {command}")
    print(
        f"setup        {rate:g} events/s for {seconds:g} s, {workers} worker(s) x {concurrency}, "
        f"{'unordered' if unordered else 'ordered'} uppercase route, {os.cpu_count()} CPUs"
    )
    duplicates = sum(len(values) - 1 for values in latencies.values())
    print(f"received     {len(firsts)}/{expected}  duplicates {duplicates}")
    if firsts:
        print(
            f"latency ms   p50 {percentile(firsts, 50):.1f}  p90 {percentile(firsts, 90):.1f}  "
            f"p99 {percentile(firsts, 99):.1f}  max {max(firsts):.1f}  "
            f"mean {statistics.fmean(firsts):.1f}"
        )


if __name__ == "__main__":
    main()
