"""The whole pipeline for workflow tests: local Momento server, receiver, workers, SDK clients.

The emulator runs in a thread and delivers webhooks to the real receiver (also in a thread),
which enqueues to the real broker; `pipeline worker` subprocesses store, run workflows and send
the outbox back to the emulator, where the test's SDK subscriber reads them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.emulator import EmulatorServer
from pipeline.outbound import momento_client as mc
from pipeline.outbound.subscriptions import Message, ResilientSubscription
from tests.conftest import TEST_SECRET, ReceiverServer, WorkerProcess

WEBHOOK_PATH = "/webhooks/momento"


def client_settings(emu: EmulatorServer) -> Settings:
    """Settings that point SDK clients at the emulator."""
    return Settings(momento_local=emu.address, momento_api_key=None)


@dataclass
class Stack:
    """One test's pipeline around a shared emulator."""

    emu: EmulatorServer
    receiver: ReceiverServer
    routes_path: Path
    start_worker: Callable[..., WorkerProcess]
    env: dict[str, str] = field(default_factory=dict)
    started: int = 0

    def worker_env(self, **extra: str) -> dict[str, str]:
        """Environment of a worker of this stack (plus ``extra``)."""
        return {
            "MOMENTO_LOCAL": self.emu.address,
            "PIPELINE_ROUTES": str(self.routes_path),
            **self.env,
            **extra,
        }

    def workers(self, count: int, *args: str, **extra: str) -> list[WorkerProcess]:
        """Start ``count`` workers at once (each with ``args``, e.g. ``-c 2``)."""
        started: list[WorkerProcess] = []
        errors: list[BaseException] = []

        def one(index: int) -> None:
            try:
                started.append(self.start_worker(f"wf{index}", *args, env=self.worker_env(**extra)))
            except BaseException as exc:  # surfaced below, in the test's thread
                errors.append(exc)

        first, self.started = self.started, self.started + count
        threads = [threading.Thread(target=one, args=(first + i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert len(started) == count
        return started

    def hook(self, cache: str, topic: str) -> None:
        """Deliver publishes on (cache, topic) to the receiver."""
        self.emu.create_cache(cache)
        self.emu.register_webhook(cache, topic, self.receiver.url + WEBHOOK_PATH, TEST_SECRET)

    def publish(self, cache: str, topic: str, texts: list[str], spacing_s: float = 0.0) -> None:
        """Publish with the official SDK, in order."""
        client = mc.topic_client(client_settings(self.emu), timeout=mc.PUBLISH_TIMEOUT)
        try:
            for text in texts:
                mc.publish(client, cache, topic, text)
                if spacing_s:
                    time.sleep(spacing_s)
        finally:
            client.close()


@contextmanager
def beat(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`pipeline beat` in a subprocess (the safety-net drains and sweeps), stopped afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "beat", "-l", "WARNING"],
        env=dict(os.environ) | env,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def subscribed(emu: EmulatorServer, cache: str, topic: str) -> Iterator[Subscriber]:
    """An SDK subscription (resilient wrapper), closed before the test moves on."""
    client = mc.topic_client(client_settings(emu))
    sub = ResilientSubscription(client, cache, topic, stall_timeout_s=30).start()
    try:
        yield Subscriber(sub)
    finally:
        sub.close()
        client.close()


@dataclass
class Subscriber:
    """Collects outbound messages: the JSON envelopes {"id", "text"} the outbox publishes."""

    sub: ResilientSubscription
    messages: list[Received] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)

    def collect(self, count: int, timeout_s: float, settle_s: float = 0.0) -> list[dict[str, Any]]:
        """Wait for ``count`` distinct messages (then ``settle_s`` more for extras); return all
        envelopes received, duplicates included.

        Distinct by envelope id: a documented resend after a crash must not stand in for a
        message still on its way (a killed worker's batch arrives only after its redelivery).
        """
        end = time.monotonic() + timeout_s
        while len(self.ids) < count and time.monotonic() < end:
            self._poll(0.2)
        settle_end = time.monotonic() + settle_s
        while time.monotonic() < settle_end:
            self._poll(0.1)
        return [json.loads(str(m.message.value)) for m in self.messages]

    def _poll(self, timeout_s: float) -> None:
        event = self.sub.poll(timeout_s)
        if isinstance(event, Message):
            self.messages.append(Received(event, time.monotonic()))
            self.ids.add(json.loads(str(event.value))["id"])


@dataclass(frozen=True)
class Received:
    """A message and when the subscriber got it (monotonic seconds)."""

    message: Message
    received_at: float
