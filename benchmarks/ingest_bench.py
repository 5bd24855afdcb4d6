"""Ingest benchmark: signed webhooks → receiver → broker → worker(s) → Postgres, on one machine.

Starts (or uses, when DATABASE_URL / CELERY_BROKER_URL are set) Postgres and the broker, migrates,
runs `pipeline receiver` (uvicorn + uvloop + httptools) and `pipeline worker` as subprocesses,
then sends N distinct signed webhooks at a fixed concurrency with wrk (a Lua script that sends
each pre-signed body once; `apt-get install -y wrk`), or, if wrk is missing, with the asyncio
keep-alive client below. Reports ack throughput and latency, the rate at which events reach
Postgres, and lost (acked, not stored) and duplicated counts.

    .venv/bin/python benchmarks/ingest_bench.py --events 100000 --concurrency 128

Events go to a cache named after the run and no route matches it, so only ingest is measured
(``--routes`` to include workflow hand-over). ``--profile DIR`` samples the receiver and the
workers with py-spy (``pip install py-spy``) into collapsed-stack files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WEBHOOK_PATH = "/webhooks/momento"
TOPIC = "bench"

LUA_SCRIPT = r"""
-- Each wrk thread sends its share of the pre-signed requests once, then idles on /healthz until
-- every one of its webhooks is answered; it marks start and end with files (wrk itself runs for
-- its -d duration, so the benchmark interrupts it once every thread is done).
local threads = {}
local count = 0

function setup(thread)
  thread:set("id", count)
  table.insert(threads, thread)
  count = count + 1
end

local function touch(name)
  io.open(string.format("%s/%s-%d", marks, name, id), "w"):close()
end

function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  marks = args[3]
  pending, answered, nxt, statuses, primed = {}, 0, 1, {}, false
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == id then
      local sig, body = line:match("^(%x+) (.*)$")
      pending[#pending + 1] = wrk.format("POST", "/webhooks/momento",
        {["content-type"] = "application/json", ["momento-signature"] = sig}, body)
    end
    i = i + 1
  end
  total = #pending
  idle = wrk.format("GET", "/healthz")
end

function request()
  -- wrk does not report the response to a thread's first request: make that one /healthz.
  if not primed then primed = true; return idle end
  if nxt <= total then
    if nxt == 1 then touch("start") end
    local r = pending[nxt]
    pending[nxt] = nil
    nxt = nxt + 1
    return r
  end
  return idle
end

function response(status, headers, body)
  if status ~= 200 then
    answered = answered + 1
    statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
    if answered == total then
      touch("done")
      wrk.thread:stop()
    end
  end
end

function done(summary, latency, requests)
  local merged, sent = {}, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do merged[status] = (merged[status] or 0) + n end
    sent = sent + thread:get("answered")
  end
  local parts = {}
  for status, n in pairs(merged) do parts[#parts + 1] = string.format('"%s": %d', status, n) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"answered": %d, "statuses": {%s}, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "p999_us": %d, "max_us": %d, "errors": %d}\n',
    sent, table.concat(parts, ", "), latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass
class ClientResult:
    """What the load generator saw."""

    tool: str
    started_s: float  # wall clock (time.time()) of the first webhook request
    duration_s: float
    statuses: dict[int, int]
    latency_ms: dict[str, float]
    errors: int
    cpu_s: float = 0.0  # CPU time of the load generator itself
    acked_seqs: set[int] | None = None  # known per event with the Python client only


@dataclass
class Storage:
    """Rows of this run seen in Postgres over time."""

    samples: list[tuple[float, int]] = field(default_factory=list)
    rows: int = 0
    distinct: int = 0
    seqs: set[int] = field(default_factory=set)


def sign(body: bytes, secret: str) -> str:
    """Momento's signature: hex HMAC-SHA3-256 of the raw body."""
    return hmac.new(secret.encode(), body, hashlib.sha3_256).hexdigest()


def make_bodies(n: int, cache: str, secret: str) -> list[tuple[str, bytes]]:
    """``n`` distinct signed webhook bodies (sequence numbers 1..n)."""
    now = int(time.time() * 1000)
    out = []
    for seq in range(1, n + 1):
        body = json.dumps(
            {
                "cache": cache,
                "topic": TOPIC,
                "event_timestamp": now,
                "publish_timestamp": now,
                "topic_sequence_number": seq,
                "token_id": "",
                "text": f"benchmark message {seq}",
            },
            separators=(",", ":"),
        ).encode()
        out.append((sign(body, secret), body))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_wrk(
    port: int, bodies: list[tuple[str, bytes]], args: argparse.Namespace, tmp: Path
) -> ClientResult:
    """Drive the receiver with wrk; each request is sent once."""
    data = tmp / "requests.txt"
    data.write_bytes(b"".join(sig.encode() + b" " + body + b"\n" for sig, body in bodies))
    script = tmp / "webhooks.lua"
    script.write_text(LUA_SCRIPT)
    marks = tmp / "marks"
    marks.mkdir()
    threads = args.wrk_threads
    url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
    command = ["wrk", f"-t{threads}", f"-c{args.concurrency}", "-d1h", "--timeout", "10s"]
    command += ["-s", str(script), url, "--", str(data), str(threads), str(marks)]
    print("load:", shlex.join(command), flush=True)
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + args.events / 100 + 60  # a floor of 100 req/s
    while len(list(marks.glob("done-*"))) < threads and time.monotonic() < deadline:
        if wrk.poll() is not None:
            break
        time.sleep(0.05)
    import psutil

    cpu_s = 0.0
    with contextlib.suppress(psutil.Error):
        times = psutil.Process(wrk.pid).cpu_times()
        cpu_s = times.user + times.system
    wrk.send_signal(signal.SIGINT)  # wrk prints its summary (and runs done()) on SIGINT
    stdout, stderr = wrk.communicate(timeout=30)
    line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {stderr or stdout}")
    report = json.loads(line.removeprefix("BENCH_JSON "))
    starts = [p.stat().st_mtime_ns for p in marks.glob("start-*")]
    ends = [p.stat().st_mtime_ns for p in marks.glob("done-*")]
    if len(ends) < threads:
        print(f"wrk: only {report['answered']:,} of {len(bodies):,} webhooks answered in time")
        ends.append(time.time_ns())
    return ClientResult(
        tool="wrk",
        started_s=min(starts) / 1e9,
        duration_s=(max(ends) - min(starts)) / 1e9,
        statuses={int(k): v for k, v in report["statuses"].items()},
        latency_ms={k: report[f"{k}_us"] / 1000 for k in ("p50", "p90", "p99", "p999", "max")},
        errors=report["errors"],
        cpu_s=cpu_s,
    )


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (content-length framed, body discarded); its status code."""
    status = int((await reader.readuntil(b"\r\n")).split(b" ", 2)[1])
    length = 0
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def keepalive_lane(
    port: int,
    todo: Iterator[tuple[int, bytes]],
    statuses: dict[int, int],
    latencies: list[int],
) -> int:
    """One keep-alive connection sending requests one after another; returns transport errors."""
    errors = 0
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    for seq, request in todo:
        started = time.perf_counter_ns()
        try:
            if streams is None:
                streams = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = streams
            writer.write(request)
            status = await read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            errors += 1
            streams = None
            continue
        latencies.append(time.perf_counter_ns() - started)
        statuses[seq] = status
    if streams is not None:
        streams[1].close()
    return errors


def run_python_client(port: int, bodies: list[tuple[str, bytes]], concurrency: int) -> ClientResult:
    """Drive the receiver with a minimal asyncio HTTP/1.1 client (no wrk on this machine)."""
    requests = [
        (
            seq,
            (
                f"POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
                f"content-type: application/json\r\nmomento-signature: {sig}\r\n"
                f"content-length: {len(body)}\r\n\r\n"
            ).encode()
            + body,
        )
        for seq, (sig, body) in enumerate(bodies, start=1)
    ]
    statuses: dict[int, int] = {}
    latencies: list[int] = []

    async def main() -> int:
        todo = iter(requests)
        lanes = [keepalive_lane(port, todo, statuses, latencies) for _ in range(concurrency)]
        return sum(await asyncio.gather(*lanes))

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    print(f"load: asyncio client, {concurrency} keep-alive connections", flush=True)
    started, cpu_started = time.time(), time.process_time()
    errors = asyncio.run(main())
    duration, cpu_s = time.time() - started, time.process_time() - cpu_started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] / 1e6 if latencies else 0

    counts: dict[int, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    return ClientResult(
        tool="python-asyncio",
        started_s=started,
        duration_s=duration,
        statuses=counts,
        latency_ms={
            "p50": pct(0.5),
            "p90": pct(0.9),
            "p99": pct(0.99),
            "p999": pct(0.999),
            "max": latencies[-1] / 1e6 if latencies else 0,
        },
        errors=errors,
        cpu_s=cpu_s,
        acked_seqs={seq for seq, status in statuses.items() if 200 <= status < 300},
    )


def watch_storage(database_url: str, cache: str, stop: threading.Event, storage: Storage) -> None:
    """Sample the number of this run's rows every 100 ms until ``stop``."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    query = text("SELECT count(*) FROM events WHERE cache = :cache")
    with engine.connect() as conn:
        while not stop.is_set():
            rows = int(conn.execute(query, {"cache": cache}).scalar_one())
            conn.commit()
            storage.samples.append((time.time(), rows))
            stop.wait(0.1)
        result = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT topic_sequence_number) FROM events "
                "WHERE cache = :cache"
            ),
            {"cache": cache},
        ).one()
        storage.rows, storage.distinct = int(result[0]), int(result[1])
        seqs = conn.execute(
            text("SELECT topic_sequence_number FROM events WHERE cache = :cache"), {"cache": cache}
        ).scalars()
        storage.seqs = {int(s) for s in seqs}
    engine.dispose()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not come up within {timeout_s:.0f} s")


def receiver_metrics(port: int) -> dict[str, float]:
    """Sums and counts of the receiver's batch-size and enqueue-latency histograms."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    values = {}
    for line in b"".join(chunks).decode().splitlines():
        name, _, value = line.partition(" ")
        wanted = name.startswith(("pipeline_ingest_batch_size", "pipeline_ingest_enqueue_sec"))
        if wanted and name.endswith(("_sum", "_count")):
            values[name] = float(value)
    return values


def http_ok(port: int, path: str) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        return sock.recv(64).startswith(b"HTTP/1.1 200")


def worker_pings(broker_url: str, count: int) -> bool:
    from pipeline.celery_app import configure, create_app
    from pipeline.config import Settings

    app = create_app()
    configure(app, Settings(celery_broker_url=broker_url))
    app.conf.broker_read_url = app.conf.broker_write_url = broker_url
    try:
        return len(app.control.ping(timeout=0.5) or []) >= count
    finally:
        app.close()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def machine_notes(database_url: str, broker_url: str) -> list[str]:
    """CPU, memory and server versions, for the record."""
    import redis
    from sqlalchemy import create_engine, text

    cpu = cpu_model()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    engine = create_engine(database_url)
    with engine.connect() as conn:
        pg = str(conn.execute(text("SHOW server_version")).scalar_one())
        sync = str(conn.execute(text("SHOW synchronous_commit")).scalar_one())
    engine.dispose()
    client = redis.Redis.from_url(broker_url)
    info = client.info("server")
    persistence = client.config_get("appendfsync").get("appendfsync", "?")
    client.close()
    server = info.get("valkey_version") or info.get("redis_version")
    wrk_path = shutil.which("wrk")
    return [
        f"cpu: {os.cpu_count()} x {cpu}; memory {mem_gib:.0f} GiB; {platform.platform()}",
        f"python {platform.python_version()}; postgres {pg} (synchronous_commit={sync}); "
        f"broker {server} (appendfsync {persistence}); wrk: {wrk_path or 'absent'}",
    ]


def server_pids(home: Path, broker_url: str) -> dict[str, int]:
    """PIDs of the broker (by its listening port) and of an embedded postmaster."""
    import psutil

    pids = {}
    port = int(broker_url.rsplit(":", 1)[1].split("/")[0])
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            pids["broker"] = conn.pid
    with contextlib.suppress(OSError, ValueError):
        pids["postgres"] = int((home / "postgres" / "postmaster.pid").read_text().split()[0])
    return pids


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system) of each process tree, reaped children included."""
    import psutil

    totals = {}
    for name, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            total = 0.0
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    total += t.user + t.system + t.children_user + t.children_system
            totals[name] = total
    return totals


def start(name: str, argv: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own, output to ``logs/<name>.log``."""
    with (logs / f"{name}.log").open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    """SIGTERM the process group; SIGKILL it if it hangs."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    # Requests in flight = rate x latency: 5,000/s at ~20-25 ms is ~100-128 open deliveries.
    parser.add_argument("--concurrency", type=int, default=128, help="open connections")
    parser.add_argument("--workers", type=int, default=1, help="`pipeline worker` processes")
    parser.add_argument("--worker-concurrency", type=int, default=2, help="per worker (-c)")
    parser.add_argument("--pool", default="prefork", help="worker pool (-P)")
    parser.add_argument("--receiver-workers", type=int, default=1, help="receiver processes")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--routes", type=Path, default=None, help="routes file (default: none)")
    parser.add_argument("--drain-timeout", type=float, default=180, help="s to wait for storage")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output directory")
    parser.add_argument("--keep-home", action="store_true", help="keep the temp PIPELINE_HOME")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
        if client == "python":
            print(
                "wrk not found (apt-get install -y wrk); using the asyncio client, which costs "
                "more CPU on this machine than wrk would",
                flush=True,
            )
    from pipeline.config import Settings
    from pipeline.stores import running_services

    home = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        settings = Settings(
            database_url=os.environ.get("DATABASE_URL") or None,
            celery_broker_url=os.environ.get("CELERY_BROKER_URL") or None,
            pipeline_home=home,
        )
        with running_services(settings) as urls:
            return run(args, client, home, urls.database_url, urls.broker_url)
    finally:
        if args.keep_home:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def run(
    args: argparse.Namespace,
    client: str,
    home: Path,
    database_url: str,
    broker_url: str,
) -> int:
    """Start receiver and workers, send the load, wait for storage, report."""
    from pipeline.cli import migrate
    from pipeline.config import Settings

    migrate.upgrade(Settings(database_url=database_url, pipeline_home=home))
    secret = secrets.token_hex(16)
    cache = f"bench-{int(time.time())}-{secrets.token_hex(3)}"
    routes = args.routes or home / "routes.toml"
    if args.routes is None:
        routes.write_text("# no routes: measure ingest alone\n")
    env = dict(os.environ) | {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "PIPELINE_HOME": str(home),
        "PIPELINE_WEBHOOK_SECRETS": secret,
        "PIPELINE_ROUTES": str(routes.resolve()),
        # Bodies are signed before the run; a slow run must not turn them stale.
        "PIPELINE_REPLAY_WINDOW_S": "3600",
    }
    for note in machine_notes(database_url, broker_url):
        print(note)
    port = free_port()
    python = [sys.executable, "-m", "pipeline.cli"]
    processes: list[tuple[str, subprocess.Popen[bytes]]] = []
    profilers: list[subprocess.Popen[bytes]] = []
    try:
        receiver_argv = [*python, "receiver", "--port", str(port)]
        receiver_argv += ["--workers", str(args.receiver_workers)]
        processes.append(("receiver", start("receiver", receiver_argv, env, home)))
        for index in range(args.workers):
            worker_argv = [*python, "worker", "-Q", "ingest", "-n", f"bench{index}@%h"]
            worker_argv += ["-c", str(args.worker_concurrency), "-P", args.pool]
            processes.append((f"worker{index}", start(f"worker{index}", worker_argv, env, home)))
        print("receiver:", shlex.join(receiver_argv))
        print("workers: ", args.workers, "x", shlex.join(worker_argv))
        wait_until(lambda: http_ok(port, "/healthz"), 30, "receiver")
        wait_until(lambda: worker_pings(broker_url, args.workers), 60, "workers")
        if args.profile:
            profilers = start_profilers(args.profile, processes)

        bodies = make_bodies(args.events, cache, secret)
        pids = server_pids(home, broker_url) | {name: proc.pid for name, proc in processes}
        cpu_before, load_before = cpu_seconds(pids), os.getloadavg()[0]
        storage = Storage()
        stop_watch = threading.Event()
        watcher = threading.Thread(
            target=watch_storage, args=(database_url, cache, stop_watch, storage)
        )
        watcher.start()
        if client == "wrk":
            result = run_wrk(port, bodies, args, home)
        else:
            result = run_python_client(port, bodies, args.concurrency)
        acked = sum(n for status, n in result.statuses.items() if 200 <= status < 300)
        metrics = receiver_metrics(port) if args.receiver_workers == 1 else {}
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline:
            if storage.samples and storage.samples[-1][1] >= acked:
                break
            time.sleep(0.1)
        stop_watch.set()
        watcher.join()
        cpu_after, load_after = cpu_seconds(pids), os.getloadavg()[0]
    finally:
        for profiler in profilers:
            profiler.send_signal(signal.SIGINT)
        for profiler in profilers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(30)
        for _, process in reversed(processes):
            stop(process)
    report(args, result, storage, acked, bodies_n=len(bodies))
    if metrics:
        batches = metrics["pipeline_ingest_batch_size_events_count"]
        size = metrics["pipeline_ingest_batch_size_events_sum"] / max(1, batches)
        wait_ms = 1000 * metrics["pipeline_ingest_enqueue_seconds_sum"] / max(1, acked)
        print(
            f"group commit       {batches:,.0f} broker messages, {size:.1f} events each; "
            f"mean wait for the broker {wait_ms:.1f} ms"
        )
    used = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    used["load generator"] = result.cpu_s
    per_k = ", ".join(f"{name} {1e6 * s / max(1, acked):.0f}" for name, s in used.items())
    print(
        f"CPU ms per 1,000 events  {per_k}  (total {1e6 * sum(used.values()) / max(1, acked):.0f})"
    )
    print(f"load average       {load_before:.2f} before, {load_after:.2f} after (2 cores)")
    return 0


def start_profilers(
    directory: Path, processes: list[tuple[str, subprocess.Popen[bytes]]]
) -> list[subprocess.Popen[bytes]]:
    """py-spy on every receiver and worker process (children included), collapsed stacks."""
    directory.mkdir(parents=True, exist_ok=True)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    profilers = []
    for name, process in processes:
        # --gil: sample only threads holding the GIL, i.e. where the CPU goes, not where it waits
        argv = [py_spy, "record", "--pid", str(process.pid), "--subprocesses", "--gil"]
        argv += ["--rate", "250"]
        argv += ["--format", "raw", "--output", str(directory / f"{name}.txt"), "--nonblocking"]
        profilers.append(
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    time.sleep(1.0)
    return profilers


def report(
    args: argparse.Namespace,
    result: ClientResult,
    storage: Storage,
    acked: int,
    bodies_n: int,
) -> None:
    """Print the numbers the issue asks for."""

    def first_reaching(target: float) -> float | None:
        hit = (t for t, rows in storage.samples if rows >= target)
        return next((t - result.started_s for t in hit), None)

    all_stored = first_reaching(acked) if acked else None
    t10, t90 = first_reaching(0.1 * acked), first_reaching(0.9 * acked)
    if result.acked_seqs is not None:
        lost = len(result.acked_seqs - storage.seqs)
    else:  # wrk knows counts, not which events; every event was sent once
        lost = max(0, acked - storage.distinct)
    duplicated = storage.rows - storage.distinct
    lat = result.latency_ms
    print()
    print(f"events sent        {bodies_n:,} at concurrency {args.concurrency} ({result.tool})")
    answers = dict(sorted(result.statuses.items()))
    print(f"answers            {answers}  transport errors {result.errors}")
    print(
        f"ack throughput     {sum(result.statuses.values()) / result.duration_s:,.0f} req/s "
        f"over {result.duration_s:.1f} s"
    )
    print(
        f"ack latency        p50 {lat['p50']:.1f} ms  p90 {lat['p90']:.1f} ms  "
        f"p99 {lat['p99']:.1f} ms  p99.9 {lat['p999']:.1f} ms  max {lat['max']:.1f} ms"
    )
    if all_stored:
        print(
            f"persisted          {acked:,} events in {all_stored:.1f} s from the first request: "
            f"{acked / all_stored:,.0f} events/s end to end"
        )
    else:
        print(
            f"persisted          only {storage.rows:,} of {acked:,} acked events within "
            f"{args.drain_timeout:.0f} s of the last ack"
        )
    if t10 is not None and t90 is not None and t90 > t10:
        print(
            f"sustained          {0.8 * acked / (t90 - t10):,.0f} events/s stored "
            f"(10% → 90% of the events)"
        )
    print(f"lost               {lost}  (acked, not stored)")
    print(f"duplicated         {duplicated}  (stored more than once)")


if __name__ == "__main__":
    sys.exit(main())
