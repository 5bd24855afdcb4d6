"""Run a set of child processes as one unit: start them, watch them, stop them all cleanly."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: Sequence[str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


class Supervisor:
    """Starts children in order and stops them in reverse order on signal or on any child's exit.

    Children get SIGTERM (Celery's warm shutdown: finish the current task, requeue the rest) and
    are killed only if they outlive ``stop_timeout_s``.
    """

    def __init__(
        self, env: Mapping[str, str], stop_timeout_s: float = 30.0, log_dir: Path | None = None
    ) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.stop_timeout_s = stop_timeout_s
        self.children: list[Child] = []
        self._stopping = False

    def spawn(self, name: str, argv: Sequence[str]) -> Child:
        """Start a child process now; output to ``log_dir/NAME.log``, or to ours if unset."""
        child = Child(name, list(argv))
        output = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (the child owns it)
        # Own process group: Ctrl-C reaches us only, and we stop children in order.
        child.process = subprocess.Popen(
            list(argv), env=self.env, start_new_session=True, stdout=output, stderr=output
        )
        if output is not None:
            output.close()
        self.children.append(child)
        logger.info("started name=%s pid=%d", name, child.process.pid)
        return child

    def log_of(self, name: str) -> Path | None:
        """The file a child's output goes to, or None when it goes to ours."""
        return None if self.log_dir is None else self.log_dir / f"{name}.log"

    def python(self, name: str, *args: str) -> Child:
        """Start ``python -m pipeline.cli ARGS`` as a child."""
        return self.spawn(name, [sys.executable, "-m", "pipeline.cli", *args])

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("signal=%s, stopping", signal.Signals(signum).name)
        self._stopping = True

    def wait(self, tick: Callable[[], None] | None = None) -> int:
        """Block until a signal or a child exits; then stop all. Returns the exit status.

        ``tick`` runs every loop (five times a second), e.g. to echo what the children log.
        """
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        status = 0
        try:
            while not self._stopping:
                for child in self.children:
                    assert child.process is not None
                    code = child.process.poll()
                    if code is not None:
                        log = self.log_of(child.name)
                        logger.error(
                            "child exited name=%s code=%d%s; stopping all",
                            child.name,
                            code,
                            f" log={log}" if log is not None else "",
                        )
                        status = code or 1
                        self._stopping = True
                        break
                if tick is not None and not self._stopping:
                    tick()
                time.sleep(0.2)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def stop(self) -> None:
        """Terminate children, newest first; kill what outlives the timeout."""
        for child in reversed(self.children):
            proc = child.process
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "killing name=%s pid=%d after %.0f s", child.name, proc.pid, self.stop_timeout_s
                )
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            logger.info("stopped name=%s code=%s", child.name, proc.returncode)
        self.children.clear()
