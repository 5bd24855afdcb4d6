"""One `pipeline up` (or `demo`) per data folder: a lock held for the stack's life.

The lock is an ``flock`` on ``<home>/up.lock``: the kernel releases it when its holder exits,
however it exits, so a lock is held exactly while a stack runs (the liveness check comes free).
Beside it, ``<home>/up.json`` says where the running stack is, for the message that refuses a
second one: a second stack would share the first one's stores, run a second beat and give its
workers the same names.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pipeline.errors import StackRunning

LOCK_FILE = "up.lock"
INFO_FILE = "up.json"


class StackLock:
    """Held while a stack runs on ``home``; ``describe`` publishes where its parts are."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock, or raise StackRunning naming the stack that holds it."""
        self.home.mkdir(parents=True, exist_ok=True)
        handle = open(self.home / LOCK_FILE, "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StackRunning(self._refusal()) from None
        self._handle = handle
        self._write({"pid": os.getpid(), "lines": ["(starting)"]})

    def describe(self, lines: list[str], momento_local: str | None = None) -> None:
        """Record where the running stack's parts are (the status block's lines, and the local
        Momento server it started, for `pipeline check`)."""
        self._write({"pid": os.getpid(), "lines": lines, "momento_local": momento_local})

    def release(self) -> None:
        """Forget the stack and let the next one start."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.home / INFO_FILE).unlink()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

    def _write(self, info: dict[str, object]) -> None:
        path = self.home / INFO_FILE
        path.with_suffix(".tmp").write_text(json.dumps(info))
        path.with_suffix(".tmp").replace(path)

    def _refusal(self) -> str:
        try:
            info = json.loads((self.home / INFO_FILE).read_text())
        except (OSError, ValueError):
            info = {}
        where = "; ".join(" ".join(str(line).split()) for line in info.get("lines", []))
        pid = info.get("pid", "?")
        return (
            f"a pipeline is already running on the data folder {self.home} (pid {pid}): {where}. "
            "Use that one, stop it first (Ctrl-C), or set PIPELINE_HOME to another folder"
        )


@contextlib.contextmanager
def stack_lock(home: Path) -> Iterator[StackLock]:
    """The data folder's stack lock, held for the block."""
    lock = StackLock(home)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def running_momento_local(home: Path) -> str | None:
    """``host:port`` of the local Momento server a running `pipeline up` on ``home`` started."""
    path = home / LOCK_FILE
    if not path.exists():
        return None
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: a stack runs
            pass
        else:
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None
    try:
        address = json.loads((home / INFO_FILE).read_text()).get("momento_local")
    except (OSError, ValueError, AttributeError):
        return None
    return address if isinstance(address, str) else None
