"""Postgres and a Redis-protocol broker of the chaos run's own, which it may crash and restart.

Both come from the project's own dependency wheels, so nothing needs installing: PostgreSQL's
``initdb``/``pg_ctl``/``postgres`` from ``pgserver`` (driven directly here, on a TCP port, since
pgserver's handle counting would fight a server that is crashed on purpose) and Valkey through
``pipeline.stores.EmbeddedBroker`` (the same ``appendonly yes`` / ``appendfsync always``
configuration `pipeline up` uses: an acknowledged batch must survive ``kill -9``).

Each server keeps its data directory and its port across a crash, on a loopback port below the
kernel's ephemeral range, so no outgoing connection can take the port while the server is down.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import warnings
from pathlib import Path

import psutil

from pipeline.stores import EmbeddedBroker

HOST = "127.0.0.1"
PG_SYSTEM_USER = "pgserver"  # pgserver's own choice: postgres refuses to run as root


class ServerError(RuntimeError):
    """A server of the chaos run did not start or stop as asked."""


def stable_port() -> int:
    """A free loopback port below the ephemeral range (20000-32767), for servers that restart."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    raise ServerError("no free port in 20000-32000 after 200 tries")


def _pg_bin() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns without XDG_RUNTIME_DIR
        from pgserver._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


class Postgres:
    """A PostgreSQL server on ``127.0.0.1:port`` with its data under ``root``."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.data = root / "pgdata"
        self.port = port or stable_port()
        self.bin = _pg_bin()
        self.user = PG_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3)."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/postgres"

    def init(self) -> None:
        """Create the cluster (initdb), as the unprivileged user when running as root."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.data.mkdir()
        if self.user is not None:
            self._grant()
        self._run(
            [
                "initdb",
                "-D",
                str(self.data),
                "--auth=trust",
                "--auth-local=trust",
                "--encoding=utf8",
                "-U",
                "postgres",
            ],
            timeout_s=120,
        )

    def start(self, timeout_s: float = 60) -> None:
        """Start the server on its port and data; return once it accepts connections."""
        options = f"-h {HOST} -p {self.port} -k {self.data}"
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.root / "postgres.log"),
                "-w",
                "-t",
                str(int(timeout_s)),
                "-o",
                options,
                "start",
            ],
            timeout_s=timeout_s + 10,
        )

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: every backend quits at once, no checkpoint (a crash)."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"], 60)
        if self.pid() is not None:
            raise ServerError("postgres still running after an immediate stop")

    def stop(self) -> None:
        """Stop for good (fast shutdown), killing the postmaster if that fails."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ServerError, subprocess.TimeoutExpired):
            self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"], 30)
        if (pid := self.pid()) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def pid(self) -> int | None:
        """The running postmaster's pid, or None."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return None
        return pid if alive else None

    def _grant(self) -> None:
        """Let the unprivileged user reach the binaries and own the data (as pgserver does)."""
        from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

        entry = ensure_user_exists(PG_SYSTEM_USER)
        ensure_prefix_permissions(self.data)
        ensure_prefix_permissions(self.bin)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)
        os.chown(self.data, entry.pw_uid, entry.pw_gid)

    def _run(self, argv: list[str], timeout_s: float) -> None:
        # Output to a file, never a pipe: the postmaster inherits pg_ctl's descriptors, and a
        # pipe it holds open would block us. A session of its own: Ctrl-C goes to us, and we
        # stop Postgres last, after the processes that use it.
        with (self.root / "pg_ctl.out").open("ab") as out:
            result = subprocess.run(
                [str(self.bin / argv[0]), *argv[1:]],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                user=self.user,
                start_new_session=True,
                check=False,
            )
        if result.returncode != 0:
            tail = (self.root / "pg_ctl.out").read_text(errors="replace")[-2000:]
            raise ServerError(f"{argv[0]} {argv[-1]} exited {result.returncode}: {tail}")


class Broker:
    """Valkey with an fsynced append-only file, crashed with SIGKILL and restarted in place."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or stable_port()
        self._server: EmbeddedBroker | None = None

    @property
    def url(self) -> str:
        """redis:// URL, the same across restarts."""
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        """Start on the same port and data (the AOF is replayed); refuse another port."""
        server = EmbeddedBroker(self.root, host=HOST, port=self.port)
        url = server.start()
        self._server = server
        if url != self.url:
            self.stop()
            raise ServerError(f"broker came up on {url}, not {self.url}")

    def crash(self) -> None:
        """``kill -9`` the server: no shutdown, no final flush; only what was fsynced survives."""
        pid = self.pid()
        if pid is None:
            raise ServerError("broker is not running")
        os.kill(pid, signal.SIGKILL)
        if self._server is not None:
            self._server.stop()  # reaps the killed process and forgets its state file

    def stop(self) -> None:
        """Stop for good (SIGTERM, which flushes the AOF)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def pid(self) -> int | None:
        """The server's pid (from the state file EmbeddedBroker keeps), or None."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            state = json.loads((self.root / "valkey" / "state.json").read_text())
            return int(state["pid"])
        return None
