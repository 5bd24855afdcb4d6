"""Subscription ingest benchmark (issue 18): Momento topics → ``pipeline listen`` → Postgres.

    local Momento server ──50 streams──▶ pipeline listen ──group commit──▶ broker ──▶ worker(s)
                                                                                     ──▶ Postgres

Every part runs as in production, each in its own process, in a temporary PIPELINE_HOME:
embedded Postgres and Valkey, ``pipeline emulator``, ``pipeline listen`` (the routes file
subscribes to ``--topics`` topics of cache ``bench``) and ``pipeline worker -Q ingest``. Phases:

1. **throughput**: ``--rate`` events/s for ``--seconds`` across the topics, round-robin.
   Persisted/s, lost and duplicated come from the ``events`` rows (source='subscription').
2. **latency**: ``--latency-rate`` (1,000/s) the same way; stored latency is
   ``events.stored_at`` (the insert's ``now()``) minus the publish time carried in each message.
3. **naive** (``--naive``): the same load into cache ``naive``, read by
   ``benchmarks/naive_subscriber.py`` (the SDK's plain subscribe loop, ``task.delay()`` per
   item, one ORM insert per task, its own Celery app and worker on the same broker).

Publishers: ``server`` (default) has the local server generate the messages itself (admin
``POST /topics/{cache}/generate``: the gRPC publish path, with the generation time in each
message), because one Python process publishing through the SDK tops out near 1,000-1,900/s
here; ``sdk`` publishes through the official async SDK from this process (the time recorded
just before each publish).

    .venv/bin/python benchmarks/listen_bench.py --topics 50 --seconds 20 --rate 3000 --naive
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ingest_bench import cpu_model, free_port, wait_until  # noqa: E402
from pipeline.emulator.generator import payload  # noqa: E402

CACHE, NAIVE_CACHE = "bench", "naive"
MEMORY_CAP_BYTES = 2 * 1024**3
"""Address-space cap of every process here that subscribes with the SDK (MOMENTO.md E.2)."""
DRAIN_S = 30.0
"""After the last publish, how long to wait for the rows (then the rest count as lost)."""


def cap_memory() -> None:
    """preexec_fn of SDK subscribers: a spinning stream fails its process, not the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))


class Children:
    """Child processes, each in its own session and log file, stopped in reverse order."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], *, capped: bool = False) -> None:
        with (self.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=cap_memory if capped else None,
            )
        self.started.append((name, process))

    def pipeline(self, name: str, *args: str, capped: bool = False) -> None:
        self.start(name, [sys.executable, "-m", "pipeline.cli", *args], capped=capped)

    def check_alive(self) -> None:
        for name, process in self.started:
            if process.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"{name} exited with {process.returncode}:\n{tail}")

    def stop(self, names: set[str] | None = None) -> None:
        chosen = [(n, p) for n, p in reversed(self.started) if names is None or n in names]
        for _, process in chosen:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for _, process in chosen:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    def pids(self) -> dict[str, list[int]]:
        roles: dict[str, list[int]] = {}
        for name, process in self.started:
            if process.poll() is None:
                roles.setdefault(name.rstrip("0123456789"), []).append(process.pid)
        return roles


def store_pids(home: Path, broker_url: str) -> dict[str, list[int]]:
    """The postmaster (its backends are its children) and the broker."""
    pids: dict[str, list[int]] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        pids["postgres"] = [int((home / "postgres" / "postmaster.pid").read_text().split()[0])]
    port = int(broker_url.rsplit(":", 1)[1].split("/")[0])
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                pids["broker"] = [conn.pid]
    return pids


def cpu_seconds(roles: dict[str, list[int]]) -> dict[str, float]:
    """User + system CPU of each role's process trees."""
    totals: dict[str, float] = {}
    for role, pids in roles.items():
        total = 0.0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                family = [] if pid == os.getpid() else root.children(recursive=True)
                for proc in [root, *family]:  # this process's children are the other roles
                    with contextlib.suppress(psutil.Error):
                        t = proc.cpu_times()
                        total += t.user + t.system
        totals[role] = total
    return totals


@dataclass
class Phase:
    """One measured load and what reached Postgres."""

    name: str
    publisher: str
    cache: str
    rate: float
    count: int
    published: int = 0
    publish_s: float = 0.0
    stored: int = 0
    distinct: int = 0
    persisted_per_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    received_ms: list[float] = field(default_factory=list)
    """Publish → the listener's receive time (events.received_at): the local server's share."""
    cpu_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    top: str = ""
    batches: int = 0
    """Ingest tasks (group-commit batches) stored during the phase."""

    @property
    def lost(self) -> int:
        return self.count - self.distinct

    @property
    def duplicated(self) -> int:
        return self.stored - self.distinct

    def percentile(self, q: float, values: list[float] | None = None) -> float | None:
        values = self.latencies_ms if values is None else values
        if not values:
            return None
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class Database:
    """The queries the benchmark makes (its own small engine)."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(url, pool_size=2)

    def scalar(self, sql: str, **params: Any) -> Any:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar_one()

    def max_id(self) -> int:
        return int(self.scalar("SELECT coalesce(max(id), 0) FROM events"))

    def count(self, cache: str, after: int) -> int:
        sql = "SELECT count(*) FROM events WHERE cache = :cache AND id > :after"
        return int(self.scalar(sql, cache=cache, after=after))

    def outcome(self, phase: Phase, after: int) -> float:
        """Fill in rows, distinct message indexes and latencies; return the last stored time."""
        from sqlalchemy import text

        sql = text(
            "SELECT (text::json->>'i')::bigint AS i, "
            "extract(epoch FROM stored_at) * 1000 - (text::json->>'t')::float8 AS ms, "
            "extract(epoch FROM received_at) * 1000 - (text::json->>'t')::float8 AS received, "
            "extract(epoch FROM stored_at) AS stored_s "
            "FROM events WHERE cache = :cache AND id > :after AND source = 'subscription'"
        )
        with self.engine.connect() as conn:
            rows = conn.execute(sql, {"cache": phase.cache, "after": after}).all()
        phase.stored = len(rows)
        phase.distinct = len({int(r.i) for r in rows if 0 <= int(r.i) < phase.count})
        phase.latencies_ms = [float(r.ms) for r in rows]
        phase.received_ms = [float(r.received) for r in rows]
        return max((float(r.stored_s) for r in rows), default=0.0)

    def batches(self) -> int:
        return int(self.scalar("SELECT count(*) FROM ingest_batches"))

    def leased(self) -> int:
        sql = "SELECT count(*) FROM subscription_leases WHERE expires_at > now()"
        return int(self.scalar(sql))


class Bench:
    """The running stack of one benchmark and its phases."""

    def __init__(self, args: argparse.Namespace, home: Path, database_url: str, broker: str):
        self.args = args
        self.home = home
        self.db = Database(database_url)
        self.broker_url = broker
        self.topics = [f"t-{i}" for i in range(args.topics)]
        self.grpc_port, self.admin_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.grpc_port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        routes = home / "routes.toml"
        names = ", ".join(f'"{t}"' for t in self.topics)
        routes.write_text(f'[[subscriptions]]\ncache = "{CACHE}"\ntopics = [{names}]\n')
        self.env = dict(os.environ) | {
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker,
            "PIPELINE_HOME": str(home),
            "MOMENTO_LOCAL": self.address,
            "PIPELINE_ROUTES": str(routes),
            "MALLOC_ARENA_MAX": "2",  # fewer 64 MiB arenas under the address-space cap
        }
        self.children = Children(self.env, home)

    def subscriptions(self) -> int:
        return int(httpx.get(f"{self.admin}/stats", timeout=5).json()["subscriptions"])

    def start(self) -> None:
        """Emulator, workers and the listener; returns once every topic is being read."""
        a = self.args
        self.children.pipeline(
            "emulator", "emulator", "--port", str(self.grpc_port), "--admin-port",
            str(self.admin_port), "--no-http", "--cache", CACHE, "--cache", NAIVE_CACHE,
            "--idle-reset-s", "0",
        )  # fmt: skip
        wait_until(lambda: httpx.get(f"{self.admin}/healthz").status_code == 200, 30, "emulator")
        for n in range(a.workers):
            self.children.pipeline(
                f"worker{n}", "worker", "-Q", "ingest", "-c", str(a.concurrency),
                "-P", "prefork", "-n", f"bench{n}@%h",
            )  # fmt: skip
        self.children.pipeline("listener", "listen", "--name", "bench", capped=True)

        def listening() -> bool:
            self.children.check_alive()
            return self.db.leased() >= len(self.topics) and self.subscriptions() >= len(self.topics)

        wait_until(listening, 60, "the listener's subscriptions")
        time.sleep(3)  # workers fork their pools and connect

    def start_naive(self) -> None:
        """The naive subscriber and its worker; returns once its streams are open."""
        script = str(ROOT / "benchmarks" / "naive_subscriber.py")
        worker = [sys.executable, script, "worker", "-c", str(self.args.concurrency)]
        self.children.start("naive-worker", [*worker, "-P", "prefork", "-n", "naive@%h"])
        lifetime = int(self.args.seconds + DRAIN_S + 120)
        self.children.start(
            "naive-subscriber",
            [
                sys.executable,
                script,
                "subscribe",
                self.address,
                NAIVE_CACHE,
                str(lifetime),
                *self.topics,
            ],
            capped=True,
        )

        def subscribed() -> bool:
            self.children.check_alive()
            return self.subscriptions() >= 2 * len(self.topics)

        wait_until(subscribed, 60, "the naive subscriber's streams")
        time.sleep(3)

    def run_phase(
        self, name: str, publisher: str, cache: str, rate: float, drain_s: float
    ) -> Phase:
        """Publish ``rate`` * seconds messages, wait for the rows, and measure."""
        count = int(rate * self.args.seconds)
        phase = Phase(name, publisher, cache, rate, count)
        after = self.db.max_id()
        batches_before = self.db.batches()
        roles = self.children.pids() | store_pids(self.home, self.broker_url)
        roles["benchmark"] = [os.getpid()]
        cpu_before, wall_before = cpu_seconds(roles), time.monotonic()
        started_s = time.time()
        snapshot = threading.Timer(self.args.seconds / 2, self.snapshot, args=(phase, roles))
        if self.args.top:
            snapshot.start()
        if publisher == "server":
            phase.published, phase.publish_s = self.generate(cache, count, rate)
        else:
            phase.published, phase.publish_s = asyncio.run(self.publish_sdk(cache, count, rate))
        deadline = time.monotonic() + drain_s
        while self.db.count(cache, after) < phase.published and time.monotonic() < deadline:
            self.children.check_alive()
            time.sleep(0.2)
        snapshot.cancel()
        if snapshot.is_alive():
            snapshot.join(15)
        phase.cpu_s = {
            role: after_s - cpu_before.get(role, 0.0)
            for role, after_s in cpu_seconds(roles).items()
        }
        phase.wall_s = time.monotonic() - wall_before
        last_s = self.db.outcome(phase, after)
        phase.batches = self.db.batches() - batches_before
        phase.persisted_per_s = phase.stored / (last_s - started_s) if last_s > started_s else 0.0
        return phase

    def snapshot(self, phase: Phase, roles: dict[str, list[int]]) -> None:
        """``top -b -n1`` mid-phase: the busiest processes of the box, ours marked by role."""
        names: dict[int, str] = {}
        for role, pids in roles.items():
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    root = psutil.Process(pid)
                    family = [] if pid == os.getpid() else root.children(recursive=True)
                    names |= {proc.pid: role for proc in [root, *family]}
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["top", "-b", "-n1", "-w", "120"], capture_output=True, text=True, timeout=10
            ).stdout.splitlines()
            lines = out[:3]
            for line in out[6:26]:
                first = line.split(None, 1)[0] if line.strip() else ""
                role = names.get(int(first), "(other)") if first.isdigit() else ""
                lines.append(f"{role:<17}{line}")
            phase.top = "\n".join(lines)

    def generate(self, cache: str, count: int, rate: float) -> tuple[int, float]:
        body = {"topics": self.topics, "count": count, "rate_per_s": rate, "size": self.args.size}
        answer = httpx.post(
            f"{self.admin}/topics/{cache}/generate", json=body, timeout=count / rate + 120
        )
        answer.raise_for_status()
        done = answer.json()
        return int(done["published"]), float(done["seconds"])

    async def publish_sdk(self, cache: str, count: int, rate: float) -> tuple[int, float]:
        """Open loop through the official async SDK: on schedule, up to 200 in flight."""
        from pipeline.config import Settings
        from pipeline.outbound import momento_client as mc

        settings = Settings(momento_local=self.address)
        client = mc.topic_client_async(settings, timeout=mc.PUBLISH_TIMEOUT)
        in_flight = asyncio.Semaphore(200)
        published = 0

        async def one(topic: str, text: str) -> None:
            nonlocal published
            try:
                await mc.publish_async(client, cache, topic, text)
                published += 1
            finally:
                in_flight.release()

        start = time.monotonic()
        tasks = []
        try:
            for i in range(count):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await in_flight.acquire()
                text = payload(i, self.args.size, time.time() * 1000)
                tasks.append(asyncio.create_task(one(self.topics[i % len(self.topics)], text)))
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        finally:
            await client.close()
        return published, time.monotonic() - start


def machine() -> str:
    cpu = cpu_model()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} x {cpu}, {mem_gib:.0f} GiB, Python {platform.python_version()}"


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def report(args: argparse.Namespace, phases: list[Phase], load: tuple[float, float]) -> None:
    print()
    print(f"command   {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine   {machine()}; load avg {load[0]:.2f} before, {load[1]:.2f} after")
    print(
        f"setup     {args.topics} topics, {args.seconds:g} s per phase, {args.size} B messages, "
        f"{args.workers} worker(s) x {args.concurrency}"
    )
    header = (
        f"{'phase':<11}{'publisher':<10}{'offered/s':>10}{'published':>10}{'pub s':>6}{'stored':>9}"
        f"{'persisted/s':>12}{'lost':>7}{'dup':>5}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>9}"
    )
    print(header)
    for p in phases:
        maximum = max(p.latencies_ms) if p.latencies_ms else None
        print(
            f"{p.name:<11}{p.publisher:<10}{p.rate:>10,.0f}{p.published:>10,}{p.publish_s:>6.1f}"
            f"{p.stored:>9,}"
            f"{p.persisted_per_s:>12,.0f}{p.lost:>7,}{p.duplicated:>5,}"
            f"{fmt(p.percentile(50)):>8}{fmt(p.percentile(99)):>8}{fmt(maximum):>9}"
        )
    for p in phases:
        if p.received_ms:
            to_listener = p.percentile(50, p.received_ms)
            to_listener_99 = p.percentile(99, p.received_ms)
            print(
                f"stages    {p.name}: publish → listener receive p50 {fmt(to_listener)} ms, "
                f"p99 {fmt(to_listener_99)} ms (the rest is group commit, broker, worker, insert)"
            )
        if p.batches:
            print(
                f"batches   {p.name}: {p.batches:,} ingest tasks, "
                f"{p.stored / p.batches:.1f} events each"
            )
    by_name = {p.name: p for p in phases}
    if "naive" in by_name and "throughput" in by_name:
        naive = by_name["naive"].persisted_per_s
        ratio = by_name["throughput"].persisted_per_s / naive if naive else float("inf")
        print(
            f"naive     {naive:,.0f} persisted/s; pipeline listen / naive = {ratio:.1f}x "
            f"(naive 'lost' = not stored within {DRAIN_S:g} s of the last publish)"
        )
    for p in phases:
        if p.wall_s <= 0:
            continue
        cores = ", ".join(
            f"{role} {s / p.wall_s:.2f}" for role, s in sorted(p.cpu_s.items(), key=lambda x: -x[1])
        )
        print(f"cores     {p.name}: {cores} (busy cores over {p.wall_s:.0f} s)")
        if p.published:
            per_k = sum(p.cpu_s.values()) * 1e6 / p.published
            print(f"          {p.name}: {per_k:.0f} CPU ms per 1,000 events, all processes")
        if p.top:
            print(f"top -b -n1 mid-{p.name}:")
            print(p.top)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topics", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0, help="publishing time per phase")
    parser.add_argument("--rate", type=float, default=3000.0, help="throughput phase events/s")
    parser.add_argument("--latency-rate", type=float, default=1000.0)
    parser.add_argument("--size", type=int, default=128, help="message bytes")
    parser.add_argument("--publisher", choices=["server", "sdk"], default="server")
    parser.add_argument(
        "--latency-publisher", choices=["server", "sdk"], default=None, help="default --publisher"
    )
    parser.add_argument("--naive", action="store_true", help="also run the naive subscriber")
    parser.add_argument("--naive-rate", type=float, default=None, help="default --rate")
    parser.add_argument("--workers", type=int, default=1, help="`pipeline worker` processes")
    parser.add_argument("--concurrency", type=int, default=2, help="pool size per worker")
    parser.add_argument("--skip", choices=["throughput", "latency"], action="append", default=[])
    parser.add_argument("--top", action="store_true", help="print a top snapshot mid-phase")
    parser.add_argument("--keep-home", action="store_true", help="keep the temp PIPELINE_HOME")
    args = parser.parse_args()
    if not 1 <= args.topics <= 500 or not 0 < args.seconds <= 300:
        parser.error("--topics must be in 1..500 and --seconds in (0, 300]")
    return args


def main() -> int:
    args = parse_args()
    from pipeline.cli import migrate
    from pipeline.config import Settings
    from pipeline.stores import running_services

    home = Path(tempfile.mkdtemp(prefix="listen-bench-"))
    phases: list[Phase] = []
    load_before = os.getloadavg()[0]
    bench: Bench | None = None
    try:
        settings = Settings(pipeline_home=home, database_url=None, celery_broker_url=None)
        with running_services(settings) as urls:
            migrate.upgrade(settings.model_copy(update={"database_url": urls.database_url}))
            bench = Bench(args, home, urls.database_url, urls.broker_url)
            try:
                bench.start()
                bench.run_phase("warmup", "server", CACHE, 500, DRAIN_S)
                if "throughput" not in args.skip:
                    phases.append(
                        bench.run_phase("throughput", args.publisher, CACHE, args.rate, DRAIN_S)
                    )
                if "latency" not in args.skip:
                    publisher = args.latency_publisher or args.publisher
                    rate = args.latency_rate
                    phases.append(bench.run_phase("latency", publisher, CACHE, rate, DRAIN_S))
                if args.naive:
                    bench.start_naive()
                    rate = args.naive_rate or args.rate
                    phases.append(bench.run_phase("naive", "server", NAIVE_CACHE, rate, DRAIN_S))
            finally:
                bench.children.stop()
                bench.db.engine.dispose()
        report(args, phases, (load_before, os.getloadavg()[0]))
        if phases and any(p.lost or p.duplicated for p in phases if p.name != "naive"):
            return 1
        return 0
    finally:
        if args.keep_home:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
