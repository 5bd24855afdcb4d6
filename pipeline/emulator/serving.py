"""Serve an ASGI app with uvicorn as a task on the emulator's event loop (admin and HTTP API)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from starlette.types import ASGIApp

GRACE_S = 2


class AppServer:
    """One uvicorn server for one app, bound to a socket the caller names."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._server: uvicorn.Server | None = None
        self._task: Any = None

    async def start(self, host: str, port: int) -> int:
        """Bind (port 0 picks one), start serving and return the bound port."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        sock.listen(128)
        sock.setblocking(False)
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=GRACE_S,  # long polls would otherwise hold a stop
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        bound: int = sock.getsockname()[1]
        return bound

    async def stop(self) -> None:
        """Stop accepting and finish open requests."""
        if self._server is None:
            return
        self._server.should_exit = True
        await self._task
