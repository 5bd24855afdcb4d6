"""Flower with authentication always on: basic auth with a configured or generated password.

Flower checks credentials on its pages and API but not on ``/metrics`` and ``/healthcheck``;
`guard_monitoring` puts those two behind the same check, so no path answers anonymously.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from pipeline.config import Settings

PASSWORD_FILE = "flower-password"


def flower_password(settings: Settings) -> str:
    """FLOWER_PASSWORD, else a random password generated once and kept under PIPELINE_HOME."""
    if settings.flower_password is not None:
        return settings.flower_password.get_secret_value()
    path = settings.home / PASSWORD_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    settings.home.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


def basic_auth(settings: Settings) -> str:
    """Flower's ``--basic-auth`` value, ``user:password``."""
    return f"{settings.flower_user}:{flower_password(settings)}"


def flower_argv(settings: Settings, host: str, port: int, persistent: bool) -> list[str]:
    """Arguments for ``celery flower``: auth, address, and optional on-disk state."""
    argv = [
        "flower",
        f"--address={host}",
        f"--port={port}",
        f"--basic-auth={basic_auth(settings)}",
        "--purge_offline_workers=300",
    ]
    if persistent:
        settings.home.mkdir(parents=True, exist_ok=True)
        argv += ["--persistent=True", f"--db={settings.home / 'flower.db'}"]
    return argv


def _authenticated(get: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(get)
    async def guarded(handler: Any, *args: Any, **kwargs: Any) -> Any:
        from tornado.web import HTTPError

        if not handler.current_user:  # Flower's basic auth raises 401 itself on bad credentials
            raise HTTPError(401)
        return await get(handler, *args, **kwargs)

    guarded.__dict__["pipeline_guarded"] = True
    return guarded


def guard_monitoring() -> None:
    """Require Flower's credentials on ``/metrics`` and ``/healthcheck`` too (idempotent)."""
    from flower.views import monitor

    for handler in (monitor.Metrics, monitor.Healthcheck):
        if not getattr(handler.get, "pipeline_guarded", False):
            handler.get = _authenticated(handler.get)
