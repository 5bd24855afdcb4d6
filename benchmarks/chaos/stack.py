"""The pipeline under test: own Postgres and broker, the local Momento server, the receiver,
N ``pipeline worker`` processes and one ``pipeline beat``, each in a process group of its own.

Everything lives in one temporary directory and on loopback ports; ``Stack`` is a context
manager that stops every process and server and removes the directory however the run ends
(an exception, Ctrl-C, or SIGTERM, which ``__main__`` turns into KeyboardInterrupt).

The pipeline processes get this process's environment (so ``PIPELINE_VISIBILITY_TIMEOUT_S=20
./run chaos kill`` reaches them), with the URLs and paths of this stack put over it, and
``PIPELINE_PUBLISH_RATE_PER_S`` defaulting to 5,000 unless set: at the default 100/s the outbound
quota, not the pipeline, would set every drain time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmarks.chaos.servers import Broker, Postgres
from benchmarks.ingest_bench import free_port, http_ok
from benchmarks.ingest_bench import start as spawn
from benchmarks.ingest_bench import stop as stop_process
from benchmarks.scaleout_bench import wait_until

ROUTE = "chaos"
ROUTES = f"""
[[routes]]
name = "{ROUTE}"
cache = "chaos-*"
topic = "t-*"
workflow = "tasks.examples:uppercase"
ordered = true
publish = {{ cache = "{{cache}}", topic = "{{topic}}-out" }}
"""
ENV_DEFAULTS = {"PIPELINE_PUBLISH_RATE_PER_S": "5000"}
ENV_DROPPED = ("MOMENTO_API_KEY", "MOMENTO_ENDPOINT")  # never real Momento
PYTHON = [sys.executable, "-m", "pipeline.cli"]


@dataclass
class StackOptions:
    """What to run."""

    workers: int = 2
    concurrency: int = 2
    beat: bool = True
    retain: int = 200_000  # outbound messages the local Momento server keeps per topic
    keep_home: bool = False
    env: dict[str, str] = field(default_factory=dict)  # over this process's environment


@dataclass
class Stack:
    """A running pipeline; use as a context manager."""

    options: StackOptions = field(default_factory=StackOptions)
    home: Path = field(init=False)
    postgres: Postgres = field(init=False)
    broker: Broker = field(init=False)
    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    receiver_port: int = field(default_factory=free_port)
    momento_port: int = field(default_factory=free_port)
    env: dict[str, str] = field(init=False)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    argv: dict[str, list[str]] = field(default_factory=dict)  # `pipeline ...` arguments
    exits: list[str] = field(default_factory=list)  # processes that exited on their own
    _control_app: Any = field(default=None, init=False, repr=False)

    def __enter__(self) -> Stack:
        self.home = Path(tempfile.mkdtemp(prefix="chaos-"))
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def momento_local(self) -> str:
        """``host:port`` of the local Momento server."""
        return f"127.0.0.1:{self.momento_port}"

    @property
    def worker_names(self) -> list[str]:
        """The worker processes' names (``worker0``, ``worker1``, ...)."""
        return [f"worker{i}" for i in range(self.options.workers)]

    def _start(self) -> None:
        from pipeline.cli import migrate
        from pipeline.config import Settings

        self.postgres = Postgres(self.home / "postgres")
        self.broker = Broker(self.home / "broker")
        self.postgres.init()
        self.postgres.start()
        self.broker.start()
        migrate.upgrade(Settings(database_url=self.postgres.url, pipeline_home=self.home))
        routes = self.home / "routes.toml"
        routes.write_text(ROUTES)
        self.env = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED}
        for key, value in ENV_DEFAULTS.items():
            self.env.setdefault(key, value)
        self.env |= self.options.env
        self.env |= {
            "DATABASE_URL": self.postgres.url,
            "CELERY_BROKER_URL": self.broker.url,
            "PIPELINE_HOME": str(self.home),
            "MOMENTO_LOCAL": self.momento_local,
            "PIPELINE_WEBHOOK_SECRETS": self.secret,
            "PIPELINE_ROUTES": str(routes),
        }
        retain = str(self.options.retain)
        self._spawn(
            "emulator",
            "emulator",
            "--port",
            str(self.momento_port),
            "--no-admin",
            "--no-http",
            "--idle-reset-s",
            "0",
            "--retain",
            retain,
            "--subscriber-queue",
            retain,
        )
        self._spawn("receiver", "receiver", "--port", str(self.receiver_port))
        for name in self.worker_names:
            self.start_worker(name)
        if self.options.beat:
            self._spawn("beat", "beat", "-l", "WARNING")
        wait_until(lambda: http_ok(self.receiver_port, "/healthz"), 60, "receiver up")
        self.wait_workers(90)

    def _spawn(self, name: str, *argv: str) -> None:
        log = self.home / f"{name}.log"
        if log.exists():  # keep what an earlier incarnation logged: worker0.1.log, worker0.2.log
            log.rename(self.home / f"{name}.{len(list(self.home.glob(f'{name}.*.log'))) + 1}.log")
        self.argv[name] = list(argv)
        self.processes[name] = spawn(name, [*PYTHON, *argv], self.env, self.home)

    def start_worker(self, name: str) -> None:
        """Start (or restart) worker ``name``: ``pipeline worker -c N -n <name>@%h``."""
        self._spawn(
            name, "worker", "-n", f"{name}@%h", "-l", "WARNING", "-c", str(self.options.concurrency)
        )

    def kill_worker(self, name: str) -> None:
        """SIGKILL worker ``name``'s whole process group (main process and pool children)."""
        import signal

        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)

    def answering_workers(self, timeout_s: float = 1.0) -> set[str]:
        """Names of the workers that answer a broadcast ping now."""
        replies = self._control().control.ping(timeout=timeout_s) or []
        return {node.split("@", 1)[0] for reply in replies for node in reply}

    def wait_workers(self, timeout_s: float, names: list[str] | None = None) -> None:
        """Wait until every named worker (default: all) answers a ping."""
        wanted = set(names or self.worker_names)
        wait_until(lambda: wanted <= self.answering_workers(), timeout_s, f"{wanted} up", 0.5)

    def _control(self) -> Any:
        app = self._control_app
        if app is None:
            from pipeline.celery_app import configure, create_app
            from pipeline.config import Settings

            app = create_app()
            configure(app, Settings(celery_broker_url=self.broker.url))
            # Celery reads $CELERY_BROKER_URL before conf.broker_url: name the broker outright.
            app.conf.broker_read_url = app.conf.broker_write_url = self.broker.url
            self._control_app = app
        return app

    def restart_exited(self) -> list[str]:
        """Restart every pipeline process that exited on its own (as a supervisor would) and
        record it in ``exits`` with the end of its log; the names restarted."""
        restarted = []
        for name, process in list(self.processes.items()):
            if process.poll() is None:
                continue
            log = (self.home / f"{name}.log").read_text(errors="replace")
            tail = " | ".join(line for line in log.splitlines()[-6:] if line.strip())
            self.exits.append(f"{name} exited with {process.returncode}: ...{tail[-600:]}")
            self._spawn(name, *self.argv[name])
            restarted.append(name)
        return restarted

    def close(self) -> None:
        """Stop processes (beat, workers, receiver, emulator), then the servers; remove home."""
        app = self._control_app
        if app is not None:
            with contextlib.suppress(Exception):
                app.close()
        for name in reversed(list(self.processes)):
            with contextlib.suppress(Exception):
                stop_process(self.processes[name], timeout_s=10)
        for server in ("broker", "postgres"):
            if hasattr(self, server):
                with contextlib.suppress(Exception):
                    getattr(self, server).stop()
        if self.options.keep_home:
            print(f"kept {self.home}", flush=True)
        elif hasattr(self, "home"):
            shutil.rmtree(self.home, ignore_errors=True)
