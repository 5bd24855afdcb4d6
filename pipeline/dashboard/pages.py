"""The dashboard's pages: overview, topic, events and trace, dead letters and their replays."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from pipeline.aggregation.stats import parse_when
from pipeline.dashboard import letters, probes, queries
from pipeline.dashboard.events import EventQuery, event_trace, search_events
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.dashboard.state import Dashboard

SERIES_HOURS = 6
MAX_REPLAYS_KEPT = 50


def _state(request: Request) -> Dashboard:
    state: Dashboard = request.app.state.dashboard
    return state


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    user = request.scope.get("user_name", "")
    context.update(
        user=user,
        csrf=_state(request).credentials.csrf_token(user),
        now=datetime.now(UTC),
    )
    response: Response = request.app.state.templates.TemplateResponse(
        request, name, context, status_code=status_code
    )
    return response


async def healthz(request: Request) -> Response:
    """Process up (no login needed, no store touched)."""
    return PlainTextResponse("ok")


def _overview_context(state: Dashboard) -> dict[str, Any]:
    state.refresh_rollups()
    up, accepted, rejections = state.receiver.scrape()
    health = probes.Health(
        queues=probes.queue_depths(state.settings),
        workers=state.workers(),
        stored_per_s=probes.stored_rates(state.engine, queries.RATE_WINDOW_S),
        receiver_up=up,
        accepted_per_s=accepted,
        rejections=rejections,
    )
    rows = queries.overview_rows(state.engine, state.window_s)
    return {"rows": rows, "health": health, "rate_s": queries.RATE_WINDOW_S}


async def overview(request: Request) -> Response:
    """Every topic, trouble on top, and the pipeline's queues, workers and doors."""
    context = await run_in_threadpool(_overview_context, _state(request))
    return _render(request, "overview.html", **context)


async def overview_partial(request: Request) -> Response:
    """The overview's live part, polled by the page."""
    context = await run_in_threadpool(_overview_context, _state(request))
    return _render(request, "_overview.html", **context)


async def topic(request: Request) -> Response:
    """One topic: charts over time, its lost ranges and resets."""
    state = _state(request)
    cache, name = request.path_params["cache"], request.path_params["topic"]
    await run_in_threadpool(state.refresh_rollups)
    stats, lost, resets = await run_in_threadpool(
        queries.topic_detail, state.engine, state.window_s, cache, name
    )
    if stats is None and not resets:
        raise HTTPException(404, f"no topic {cache}/{name}")
    return _render(
        request,
        "topic.html",
        cache=cache,
        topic=name,
        stats=stats,
        lost=lost,
        resets=resets,
        hours=SERIES_HOURS,
    )


async def series(request: Request) -> Response:
    """A topic's roll-up series as JSON columns, for the charts."""
    state = _state(request)
    since = datetime.now(UTC) - timedelta(hours=SERIES_HOURS)
    found = await run_in_threadpool(
        queries.topic_series,
        state.engine,
        state.window_s,
        request.path_params["cache"],
        request.path_params["topic"],
        since,
    )
    return JSONResponse({"window_s": state.window_s, **found.to_json()})


def _int(value: str | None, name: str) -> int | None:
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number, got {value!r}") from None


def _time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return parse_when(value, datetime.now(UTC))
    except ValueError as exc:
        raise HTTPException(400, f"{name}: {exc}") from None


async def events(request: Request) -> Response:
    """Search events by cache/topic glob, sequence range, received time and text."""
    params = request.query_params
    query = EventQuery(
        cache=params.get("cache") or None,
        topic=params.get("topic") or None,
        from_seq=_int(params.get("from_seq"), "from_seq"),
        to_seq=_int(params.get("to_seq"), "to_seq"),
        since=_time(params.get("since"), "since"),
        until=_time(params.get("until"), "until"),
        text=params.get("q") or None,
    )
    found = await run_in_threadpool(search_events, _state(request).engine, query)
    return _render(request, "events.html", rows=found, params=params, limit=query.limit)


async def trace(request: Request) -> Response:
    """One event's whole trace: raw body, route runs, outbox rows, dead letters."""
    event_id = request.path_params["event_id"]
    found = await run_in_threadpool(event_trace, _state(request).engine, event_id)
    if found is None:
        raise HTTPException(404, f"no event {event_id}")
    return _render(request, "trace.html", trace=found)


def _letter_filter(params: Any) -> letters.LetterFilter:
    return letters.LetterFilter(
        kind=params.get("kind") or None,
        reason=params.get("reason") or None,
        resolved=params.get("resolved") == "1",
    )


async def dead_letters(request: Request) -> Response:
    """Dead letters with reason and payload, counts by reason, and the replay form."""
    state = _state(request)
    chosen = _letter_filter(request.query_params)
    rows = await run_in_threadpool(letters.list_letters, state.engine, chosen)
    reasons = await run_in_threadpool(letters.count_by_reason, state.engine, chosen)
    return _render(request, "dead_letters.html", rows=rows, reasons=reasons, chosen=chosen)


async def replay(request: Request) -> Response:
    """Replay the selected (or all matching) dead letters: first a confirmation with the count,
    then, once confirmed, the runs go to the workers and the page follows their progress."""
    state = _state(request)
    form = await request.form()
    user = request.scope.get("user_name", "")
    token = form.get("csrf")
    if not state.credentials.csrf_ok(user, token if isinstance(token, str) else None):
        raise HTTPException(403, "missing or stale form token; reload the page and try again")
    chosen = _letter_filter(form)
    if form.get("all") == "1":
        ids = await run_in_threadpool(letters.matching_letter_ids, state.engine, chosen)
    else:
        ids = tuple(sorted({_int(str(v), "id") or 0 for v in form.getlist("id")} - {0}))
    try:
        from pipeline.workflows.routes import routes_for

        table = routes_for(state.settings)
    except PipelineError as exc:
        raise HTTPException(500, f"routes file: {exc}") from exc
    pairs = await run_in_threadpool(letters.planned_runs, state.engine, table, ids)
    if form.get("confirm") != "1":
        return _render(
            request,
            "replay_confirm.html",
            ids=ids,
            pairs=pairs,
            events=len({event_id for _, event_id in pairs}),
        )
    if not pairs:
        return RedirectResponse(request.url_for("dead_letters"), status_code=303)
    await run_in_threadpool(letters.start_replay, state.engine, state.celery, pairs)
    job = secrets.token_urlsafe(8)
    state.replays[job] = pairs
    while len(state.replays) > MAX_REPLAYS_KEPT:  # dicts keep insertion order: oldest first
        del state.replays[next(iter(state.replays))]
    return RedirectResponse(request.url_for("replay_status", job=job), status_code=303)


def _job(request: Request) -> list[tuple[str, int]]:
    pairs = _state(request).replays.get(request.path_params["job"])
    if pairs is None:
        raise HTTPException(404, "no such replay (the dashboard restarted?)")
    return pairs


async def replay_status(request: Request) -> Response:
    """A replay's progress page."""
    pairs = _job(request)
    progress = await run_in_threadpool(letters.replay_progress, _state(request).engine, pairs)
    job = request.path_params["job"]
    return _render(request, "replay.html", job=job, pairs=pairs, progress=progress)


async def replay_partial(request: Request) -> Response:
    """A replay's progress, polled by its page."""
    pairs = _job(request)
    progress = await run_in_threadpool(letters.replay_progress, _state(request).engine, pairs)
    job = request.path_params["job"]
    return _render(request, "_replay.html", job=job, progress=progress)
