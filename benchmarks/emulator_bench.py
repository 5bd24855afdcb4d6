"""Publish -> subscriber latency and publishes/s of the emulator, through the official SDK.

Starts ``python -m pipeline.emulator`` on a free port, then runs, with one subscriber each:
  sync        TopicClient, sequential publishes, SDK sync iterator
  async       TopicClientAsync, sequential awaits, SDK async iterator
  async-N     TopicClientAsync, N publishes in flight (throughput; numbers must stay consecutive)
  resilient   TopicClient publishes, pipeline.outbound.subscriptions.ResilientSubscription
  cache       CacheClient set+get per operation
Latency runs from just before ``publish()`` to the moment the subscriber gets the item.

    .venv/bin/python benchmarks/emulator_bench.py [--messages 1000] [--in-flight 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import grpc
from momento import (
    CacheClient,
    Configurations,
    CredentialProvider,
    TopicClient,
    TopicClientAsync,
    TopicConfigurations,
)

from pipeline.config import Settings
from pipeline.outbound import momento_client as mc
from pipeline.outbound.subscriptions import Message, ResilientSubscription

CACHE = "bench"
STOP = "stop"


class Tripped(BaseException):
    """A guarded SDK stream ended or overran its deadline (the SDK would spin)."""


@contextmanager
def guarded(sub: Any, deadline_s: float) -> Iterator[None]:
    """Interrupt the main thread if the SDK stream ends or the deadline passes (MOMENTO.md E)."""
    armed = threading.Event()
    armed.set()
    main = threading.main_thread().ident
    assert main is not None

    def trip(signum: int, frame: object) -> None:
        if armed.is_set():
            armed.clear()
            raise Tripped("subscription stream ended or deadline passed")

    def watch() -> None:
        end = time.monotonic() + deadline_s
        while armed.is_set():
            if sub._client_stream.done() or time.monotonic() > end:
                signal.pthread_kill(main, signal.SIGUSR1)
                return
            time.sleep(0.05)

    previous = signal.signal(signal.SIGUSR1, trip)
    threading.Thread(target=watch, daemon=True).start()
    try:
        yield
    finally:
        armed.clear()
        signal.signal(signal.SIGUSR1, previous)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, count: int, elapsed_s: float, latencies_s: list[float]) -> dict[str, Any]:
    row = {"scenario": name, "messages": count, "per_s": count / elapsed_s}
    if latencies_s:
        row |= {
            "p50_ms": percentile(latencies_s, 0.50) * 1000,
            "p99_ms": percentile(latencies_s, 0.99) * 1000,
            "mean_ms": statistics.fmean(latencies_s) * 1000,
        }
    return row


def topic_config() -> Any:
    return TopicConfigurations.Default.latest().with_client_timeout(timedelta(days=1))


def bench_sync(creds: CredentialProvider, count: int, topic: str) -> dict[str, Any]:
    sent: dict[int, float] = {}
    latencies: list[float] = []
    with TopicClient(topic_config(), creds) as client:
        sub = client.subscribe(CACHE, topic)
        elapsed: list[float] = []

        def publisher() -> None:
            start = time.perf_counter()
            for i in range(count):
                sent[i] = time.perf_counter()
                client.publish(CACHE, topic, str(i))
            elapsed.append(time.perf_counter() - start)
            client.publish(CACHE, topic, STOP)

        thread = threading.Thread(target=publisher)
        thread.start()
        with guarded(sub, 120):
            for item in sub:
                if item.value == STOP:
                    break
                latencies.append(time.perf_counter() - sent[int(item.value)])
        sub.unsubscribe()
        thread.join()
    return report("sync sequential", count, elapsed[0], latencies)


async def bench_async(creds: CredentialProvider, count: int, topic: str, in_flight: int) -> Any:
    sent: dict[int, float] = {}
    latencies: list[float] = []
    numbers: list[int] = []
    async with TopicClientAsync(topic_config(), creds) as client:
        sub = await client.subscribe(CACHE, topic)

        async def consume() -> None:
            async for item in sub:
                if item.value == STOP:
                    return
                now = time.perf_counter()
                latencies.append(now - sent[int(item.value)])
                numbers.append(item.sequence_number)

        async def one(i: int, gate: asyncio.Semaphore) -> None:
            async with gate:
                sent[i] = time.perf_counter()
                await client.publish(CACHE, topic, str(i))

        with guarded(sub, 120):
            consumer = asyncio.create_task(consume())
            gate = asyncio.Semaphore(in_flight)
            start = time.perf_counter()
            if in_flight == 1:
                for i in range(count):
                    await one(i, gate)
            else:
                await asyncio.gather(*(one(i, gate) for i in range(count)))
            elapsed = time.perf_counter() - start
            await client.publish(CACHE, topic, STOP)
            await consumer
        sub.unsubscribe()
    assert numbers == list(range(numbers[0], numbers[0] + count)), "numbers not consecutive"
    name = "async sequential" if in_flight == 1 else f"async {in_flight} in flight"
    return report(name, count, elapsed, latencies if in_flight == 1 else [])


def bench_resilient(settings: Settings, count: int, topic: str) -> dict[str, Any]:
    latencies: list[float] = []
    client = mc.topic_client(settings)
    with client, ResilientSubscription(client, CACHE, topic) as sub:
        start = time.perf_counter()
        for i in range(count):
            sent = time.perf_counter()
            mc.publish(client, CACHE, topic, str(i))
            event = sub.poll(5)
            assert isinstance(event, Message), event
            latencies.append(time.perf_counter() - sent)
        elapsed = time.perf_counter() - start
    return report("resilient (publish, then poll)", count, elapsed, latencies)


def bench_cache(creds: CredentialProvider, count: int) -> dict[str, Any]:
    latencies: list[float] = []
    with CacheClient(Configurations.Laptop.latest(), creds, timedelta(minutes=5)) as client:
        start = time.perf_counter()
        for i in range(count):
            t0 = time.perf_counter()
            client.set(CACHE, f"k{i}", "v" * 100)
            client.get(CACHE, f"k{i}")
            latencies.append((time.perf_counter() - t0) / 2)
        elapsed = time.perf_counter() - start
    return report("cache set+get (per op)", count * 2, elapsed, latencies)


@contextmanager
def emulator_process() -> Iterator[int]:
    cmd = [
        sys.executable,
        "-m",
        "pipeline.emulator",
        "--port",
        "0",
        "--no-admin",
        "--no-http",
        "--cache",
        CACHE,
        "--idle-reset-s",
        "0",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        match = re.search(r"grpc=[\d.]+:(\d+)", proc.stdout.readline())
        assert match, "emulator did not start"
        yield int(match.group(1))
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=100)
    args = parser.parse_args()
    n = args.messages
    print(f"$ {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"python {platform.python_version()}, grpcio {grpc.__version__}, cpus {os.cpu_count()}")
    with emulator_process() as port:
        creds = CredentialProvider.for_momento_local("127.0.0.1", port)
        settings = Settings(momento_local=f"127.0.0.1:{port}", momento_api_key=None)
        bench_sync(creds, 100, "warmup")
        rows = [
            bench_sync(creds, n, "sync"),
            asyncio.run(bench_async(creds, n, "async", 1)),
            asyncio.run(bench_async(creds, n, "async-n", args.in_flight)),
            bench_resilient(settings, n, "resilient"),
            bench_cache(creds, n),
        ]
    print(f"{'scenario':32} {'msgs':>6} {'per s':>8} {'p50 ms':>7} {'p99 ms':>7}")
    for row in rows:
        p50 = f"{row['p50_ms']:7.2f}" if "p50_ms" in row else f"{'-':>7}"
        p99 = f"{row['p99_ms']:7.2f}" if "p99_ms" in row else f"{'-':>7}"
        print(f"{row['scenario']:32} {row['messages']:6d} {row['per_s']:8.0f} {p50} {p99}")


if __name__ == "__main__":
    main()
