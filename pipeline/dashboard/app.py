"""The dashboard's Starlette app: its routes, its template filters, basic auth around all of it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import kombu.exceptions
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from pipeline.config import Settings
from pipeline.dashboard import pages
from pipeline.dashboard.auth import BasicAuthMiddleware, Credentials
from pipeline.dashboard.probes import ReceiverScraper
from pipeline.dashboard.state import Dashboard

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _from_ms(value: int | None) -> str:
    return "-" if value is None else _when(datetime.fromtimestamp(value / 1000, UTC))


def _path_part(value: str) -> str:
    """A cache or topic name as one URL path segment (``url_for`` does not quote: a topic
    holding ``#``, ``?`` or ``%`` would link elsewhere)."""
    return quote(value, safe="")


def templates() -> Jinja2Templates:
    """The page templates, with the dashboard's formatting filters."""
    found = Jinja2Templates(directory=HERE / "templates")
    found.env.filters.update(age=_age, ms=_ms, when=_when, from_ms=_from_ms, part=_path_part)
    return found


async def _database_down(request: Request, exc: Exception) -> Response:
    logger.warning("database unreachable path=%s error=%s", request.url.path, exc)
    return PlainTextResponse(
        "the database is unreachable; this page will work again once it is back",
        status_code=503,
    )


async def _broker_down(request: Request, exc: Exception) -> Response:
    logger.warning("broker unreachable path=%s error=%s", request.url.path, exc)
    return PlainTextResponse(
        "the broker is unreachable; nothing was queued, try again once it is back",
        status_code=503,
    )


def create_app(
    settings: Settings,
    *,
    user: str,
    password: str,
    receiver_url: str | None = None,
    celery: Celery | None = None,
) -> Starlette:
    """The dashboard for ``settings``' database and broker, behind ``user``/``password``."""
    from pipeline.celery_app import app as default_app
    from pipeline.celery_app import configure
    from pipeline.db import get_engine

    if celery is None:
        celery = default_app
        configure(celery, settings)
    state = Dashboard(
        settings=settings,
        engine=get_engine(settings),
        credentials=Credentials(user, password),
        receiver=ReceiverScraper(receiver_url),
        celery=celery,
    )
    routes: list[Any] = [
        Route("/healthz", pages.healthz),
        Route("/", pages.overview),
        Route("/partials/overview", pages.overview_partial),
        Route("/topics/{cache}/{topic:path}", pages.topic),
        Route("/api/series/{cache}/{topic:path}", pages.series),
        Route("/events", pages.events),
        Route("/events/{event_id:int}", pages.trace),
        Route("/dead-letters", pages.dead_letters),
        Route("/dead-letters/replay", pages.replay, methods=["POST"]),
        Route("/replays/{job}", pages.replay_status),
        Route("/partials/replays/{job}", pages.replay_partial),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(BasicAuthMiddleware, credentials=state.credentials)],
        exception_handlers={
            OperationalError: _database_down,
            kombu.exceptions.OperationalError: _broker_down,
        },
    )
    app.state.dashboard = state
    app.state.templates = templates()
    return app
