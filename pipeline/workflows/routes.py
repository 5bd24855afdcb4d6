"""The routes file (TOML): which workflow runs for which inbound topic, and where results go.

    [[routes]]
    name = "uppercase"
    cache = "demo"                      # glob on the inbound cache
    topic = "topic 1"                   # glob on the inbound topic
    workflow = "tasks.examples:uppercase"
    ordered = true                      # run in topic sequence order
    publish = { cache = "{cache}", topic = "topic 2" }
    cache_set = { cache = "{cache}", key = "latest:{topic}", ttl_seconds = 600 }

A route may take change records (``POST /changes/{source}``) instead of topic events: it names
``changes = "source:table"`` (globs allowed on both) in place of cache/topic, its workflow is
optional (a Celery task that transforms the record), and its templates may name the record's
``{source}``, ``{table}``, ``{op}``, ``{keys.NAME}``, ``{new.NAME}`` and ``{old.NAME}``:

    [[routes]]
    name = "user-cache"
    changes = "dynamodb:user"
    cache_set = { cache = "user", key = "{keys.id}", ttl_seconds = 300 }
    publish = { cache = "user", topic = "user-changes" }

Every route whose globs match an event runs. ``publish``/``cache_set`` are templates naming
``{cache}``/``{topic}`` of the inbound event and fields of the result (``workflows.output``).
A bad file raises RoutesError naming the file, line and every problem; nothing starts with it.

The same file names the topics ``pipeline listen`` consumes by subscription (exact names:
Momento has neither topic wildcards nor a way to list topics); routes match their events
exactly as they match webhook events:

    [[subscriptions]]
    cache = "demo"
    topics = ["topic 1", "orders"]
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.errors import RoutesError
from pipeline.workflows.change_routes import ChangeRoute, parse_change_route
from pipeline.workflows.route_tables import (
    CACHE_SET_KEYS,
    NAME_RE,
    PUBLISH_KEYS,
    WORKFLOW_RE,
    CacheTarget,
    Problems,
    PublishTarget,
    check_ttl,
    template_table,
)
from pipeline.workflows.templates import fill_known

logger = logging.getLogger(__name__)

ROUTE_KEYS = {"name", "cache", "topic", "workflow", "ordered", "publish", "cache_set"}




@dataclass(frozen=True)
class Route:
    """One ``[[routes]]`` table; ``line`` is where it starts in the file."""

    name: str
    cache: str
    topic: str
    workflow: str
    ordered: bool = False
    publish: PublishTarget | None = None
    cache_set: CacheTarget | None = None
    line: int = 0

    def matches(self, cache: str, topic: str) -> bool:
        """Whether an event of (cache, topic) runs this route."""
        return fnmatchcase(cache, self.cache) and fnmatchcase(topic, self.topic)

    def targets(self) -> list[PublishTarget | CacheTarget]:
        """The outbound targets, with {cache}/{topic} filled in where the route names one exactly.

        Other template fields (a result's) stay as written, e.g. ``weather:{location}``.
        """
        known = {
            name: value
            for name, value in (("cache", self.cache), ("topic", self.topic))
            if not any(ch in value for ch in "*?[")
        }
        found: list[PublishTarget | CacheTarget] = []
        if self.publish is not None:
            found.append(
                PublishTarget(
                    fill_known(self.publish.cache, known), fill_known(self.publish.topic, known)
                )
            )
        if self.cache_set is not None:
            target = self.cache_set
            found.append(
                CacheTarget(
                    fill_known(target.cache, known),
                    fill_known(target.key, known),
                    target.ttl_seconds,
                )
            )
        return found


@dataclass(frozen=True)
class RouteTable:
    """The routes of one file, in file order."""

    routes: tuple[Route, ...] = ()
    path: Path | None = None
    subscriptions: tuple[tuple[str, str], ...] = ()
    """(cache, topic) of every subscribed topic, in file order, each once."""
    changes: tuple[ChangeRoute, ...] = ()
    """The routes of change records, in file order (not among ``routes``)."""
    _by_name: dict[str, Route] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({route.name: route for route in self.routes})

    def matching(self, cache: str, topic: str) -> tuple[Route, ...]:
        """Every route an event of (cache, topic) runs, in file order."""
        return tuple(route for route in self.routes if route.matches(cache, topic))

    def changes_matching(self, source: str, table: str) -> tuple[ChangeRoute, ...]:
        """Every change route a record of (source, table) runs, in file order."""
        return tuple(route for route in self.changes if route.matches(source, table))

    def get(self, name: str) -> Route:
        """The route called ``name``; RoutesError if the file has none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise RoutesError(f"{self.path}: no route named {name!r}") from None

    def __len__(self) -> int:
        return len(self.routes)

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)


def parse_routes(text: str, path: Path, *, resolve: bool = True) -> RouteTable:
    """Parse and validate a routes file's text; with ``resolve`` also import every workflow."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        where = f"{found.group(1)}:{found.group(2)}" if found else "1"
        raise RoutesError(f"{path}:{where}: not valid TOML: {exc}") from exc
    problems = Problems(path, text)
    unknown = sorted(set(data) - {"routes", "subscriptions"})
    if unknown:
        problems.add(
            1,
            f"unknown top-level key(s) {unknown}; a routes file holds [[routes]] and "
            "[[subscriptions]]",
        )
    raw = data.get("routes", [])
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        problems.add(1, "routes must be an array of tables ([[routes]])")
        raw = []
    routes: list[Route] = []
    changes: list[ChangeRoute] = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        route: Route | ChangeRoute | None
        if "changes" in item:
            route = parse_change_route(item, index, problems, resolve)
        else:
            route = _route(item, index, problems, resolve)
        if route is None:
            continue
        if route.name in names:
            problems.add(route.line, f"route name {route.name!r} is used twice")
        names.add(route.name)
        if isinstance(route, ChangeRoute):
            changes.append(route)
        else:
            routes.append(route)
    subscriptions = _subscriptions(data.get("subscriptions", []), problems)
    if problems.found:
        raise RoutesError("\n".join(problems.found))
    return RouteTable(tuple(routes), path, subscriptions, tuple(changes))


def _subscriptions(raw: Any, problems: Problems) -> tuple[tuple[str, str], ...]:
    """The ``[[subscriptions]]`` tables as (cache, topic) pairs; problems noted with lines."""
    lines = [i + 1 for i, line in enumerate(problems.lines)
             if re.match(r"^\s*\[\[\s*subscriptions\s*\]\]", line)]  # fmt: skip
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        problems.add(1, "subscriptions must be an array of tables ([[subscriptions]])")
        return ()
    found: dict[tuple[str, str], None] = {}
    for index, item in enumerate(raw):
        line = lines[index] if index < len(lines) else 1
        unknown = sorted(set(item) - {"cache", "topics"})
        cache, topics = item.get("cache"), item.get("topics")
        if unknown:
            problems.add(line, f"unknown key(s) {unknown} in [[subscriptions]]: cache, topics")
        if not isinstance(cache, str) or not cache:
            problems.add(line, f"subscriptions need a cache name, got {cache!r}")
            continue
        if not isinstance(topics, list) or not topics:
            problems.add(line, f"subscriptions need topics = [names], got {topics!r}")
            continue
        for topic in topics:
            if not isinstance(topic, str) or not topic:
                problems.add(line, f"a subscribed topic must be a non-empty name, got {topic!r}")
            elif any(ch in topic for ch in "*?["):
                problems.add(line, f"topic {topic!r}: subscriptions take exact names, no globs")
            else:
                found[(cache, topic)] = None
    return tuple(found)


def _route(item: dict[str, Any], index: int, problems: Problems, resolve: bool) -> Route | None:
    before = len(problems.found)
    line = problems.route_line(index)
    name = item.get("name")
    bad = problems.of_route(item, index)

    for key in sorted(set(item) - ROUTE_KEYS):
        bad(key, f"unknown key {key!r}; known: {sorted(ROUTE_KEYS)}")
    for key in ("name", "cache", "topic", "workflow"):
        if not isinstance(item.get(key), str) or not item[key]:
            bad(key, f"{key} must be a non-empty string, got {item.get(key)!r}")
    if isinstance(name, str) and name and not NAME_RE.match(name):
        bad("name", f"name must match {NAME_RE.pattern}, got {name!r}")
    workflow = item.get("workflow")
    if isinstance(workflow, str) and workflow:
        if not WORKFLOW_RE.match(workflow):
            bad("workflow", f"workflow must be 'module:attribute', got {workflow!r}")
        elif resolve:
            try:
                from pipeline.workflows.results import resolve_workflow

                resolve_workflow(workflow)
            except (ImportError, AttributeError, TypeError) as exc:
                bad("workflow", f"workflow {workflow!r} cannot be used: {exc}")
    ordered = item.get("ordered", False)
    if not isinstance(ordered, bool):
        bad("ordered", f"ordered must be true or false, got {ordered!r}")
    publish = template_table(item, "publish", PUBLISH_KEYS, bad)
    cache_set = template_table(item, "cache_set", CACHE_SET_KEYS, bad)
    check_ttl(cache_set, bad)
    if len(problems.found) > before:
        return None
    return Route(
        name=str(name),
        cache=str(item["cache"]),
        topic=str(item["topic"]),
        workflow=str(workflow),
        ordered=bool(ordered),
        publish=PublishTarget(**publish) if publish else None,
        cache_set=CacheTarget(**cache_set) if cache_set else None,
        line=line,
    )


def load_routes(path: Path, *, resolve: bool = True, required: bool = True) -> RouteTable:
    """Read and validate a routes file; a missing file is an error only when ``required``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise RoutesError(f"{path}: routes file not found") from None
        logger.info("no routes file path=%s: events are stored, no workflows run", path)
        return RouteTable((), path)
    except OSError as exc:
        raise RoutesError(f"{path}: cannot read routes file: {exc}") from exc
    table = parse_routes(text, path, resolve=resolve)
    logger.info("routes loaded path=%s routes=%d", path, len(table))
    return table


@cache
def _cached(path: Path, required: bool) -> RouteTable:
    return load_routes(path, required=required)


def routes_for(settings: Settings) -> RouteTable:
    """The process's routes (PIPELINE_ROUTES), loaded and checked once.

    The default ``routes.toml`` may be absent (no workflows run); a path set explicitly must exist.
    """
    required = "pipeline_routes" in settings.model_fields_set
    return _cached(settings.pipeline_routes.resolve(), required)
