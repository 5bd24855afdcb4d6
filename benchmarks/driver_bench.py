"""The ordered driver's serial path in one process: store a batch, drive it, publish the results.

No Celery and no receiver: this is the part of a worker that one topic's events go through one
after the other, so its wall time per event bounds how fast one ordered topic can go. Runs
against embedded Postgres and Valkey and `pipeline emulator` in a process of its own; prints CPU
(the driver's thread, this whole process) and wall time per event.

    .venv/bin/python benchmarks/driver_bench.py                  # 600 batches of 3 events
    .venv/bin/python benchmarks/driver_bench.py --batches 300 --batch-size 1
    .venv/bin/python benchmarks/driver_bench.py --added-rtt-ms 2   # Momento across a network

``--added-rtt-ms`` sleeps that long in each outbound publish before the call, standing in for
the network between a worker and real Momento (the local server answers in well under 1 ms).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.e2e_latency import free_port, port_open, wait_until

ROUTES = """
[[routes]]
name = "bench"
cache = "bench"
topic = "in"
workflow = "tasks.examples:uppercase"
ordered = true
publish = { cache = "{cache}", topic = "out" }
"""


@click.command()
@click.option("--batches", default=600, show_default=True, help="Batches measured.")
@click.option("--batch-size", default=3, show_default=True, help="Events per batch.")
@click.option("--warmup", default=30, show_default=True, help="Batches before measuring.")
@click.option("--added-rtt-ms", default=0.0, show_default=True, help="Simulated network RTT.")
@click.option("--keep-home", is_flag=True, help="Keep the temporary PIPELINE_HOME (logs, data).")
def main(batches: int, batch_size: int, warmup: int, added_rtt_ms: float, keep_home: bool) -> None:
    """Store and drive ``batches`` batches; report CPU and wall time per event."""
    from pipeline.cli import migrate
    from pipeline.config import Settings
    from pipeline.stores import running_services

    home = Path(tempfile.mkdtemp(prefix="driver-bench-"))
    routes = home / "routes.toml"
    routes.write_text(ROUTES)
    port = free_port()
    serve = ["emulator", "--port", str(port), "--no-admin", "--idle-reset-s", "0"]
    emulator = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *serve, "--cache", "bench"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with running_services(Settings(pipeline_home=home)) as urls:
            os.environ |= {
                "DATABASE_URL": urls.database_url,
                "CELERY_BROKER_URL": urls.broker_url,
                "MOMENTO_LOCAL": f"127.0.0.1:{port}",
                "PIPELINE_ROUTES": str(routes),
                "PIPELINE_PUBLISH_RATE_PER_S": "100000",
            }
            migrate.upgrade(Settings())
            wait_until(lambda: port_open(port), 30, "the local Momento server")
            measure(batches, batch_size, warmup, added_rtt_ms)
    finally:
        emulator.terminate()
        emulator.wait(20)
        if keep_home:
            print(f"kept {home}")
        else:  # its Postgres and broker data
            shutil.rmtree(home, ignore_errors=True)


def measure(batches: int, batch_size: int, warmup: int, added_rtt_ms: float) -> None:
    from pipeline.config import get_settings
    from pipeline.emulator.webhooks import build_body
    from pipeline.ingest.store import store_batch
    from pipeline.outbound import momento_client
    from pipeline.sequencing.store import policy_from
    from pipeline.workflows.dispatch import hand_over
    from tasks.workflows import drive_here, run_here

    if added_rtt_ms:
        publish = momento_client.publish

        def far_publish(*args: Any, **kwargs: Any) -> Any:
            time.sleep(added_rtt_ms / 1000)
            return publish(*args, **kwargs)

        momento_client.publish = far_publish  # type: ignore[assignment]
    settings = get_settings()
    policy = policy_from(settings)
    numbers = itertools.count(1)

    def one() -> None:
        now = int(time.time() * 1000)
        items = [
            [
                build_body(
                    cache="bench",
                    topic="in",
                    event_timestamp_ms=now,
                    publish_timestamp_ms=now,
                    sequence_number=next(numbers),
                    text=f"event {i}",
                ).decode(),
                now,
            ]
            for i in range(batch_size)
        ]
        result = store_batch(settings, items, policy, None)
        hand_over(settings, result, drive_here, run_here)

    for _ in range(warmup):
        one()
    thread0, process0, wall0 = time.thread_time(), time.process_time(), time.perf_counter()
    for _ in range(batches):
        one()
    events = batches * batch_size
    thread_ms = 1000 * (time.thread_time() - thread0) / events
    process_ms = 1000 * (time.process_time() - process0) / events
    wall_ms = 1000 * (time.perf_counter() - wall0) / events
    rtt = f", {added_rtt_ms:g} ms added to each publish" if added_rtt_ms else ""
    print(f"{events} events in batches of {batch_size}, ordered uppercase route{rtt}")
    print(
        f"per event: driver thread CPU {thread_ms:.2f} ms, process CPU {process_ms:.2f} ms "
        f"(sender thread and gRPC included), wall {wall_ms:.2f} ms"
    )


if __name__ == "__main__":
    main()
