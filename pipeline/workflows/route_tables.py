"""The parts of a routes file's ``[[routes]]`` tables that every kind of route shares: names,
outbound targets and their templates, and problems collected with their lines."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.workflows.templates import template_fields

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
WORKFLOW_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
MAX_TTL_S = 24 * 3600  # Momento's on-demand TTL limit (MOMENTO.md, cache basics)
PUBLISH_KEYS = {"cache", "topic"}
CACHE_SET_KEYS = {"cache", "key", "ttl_seconds"}

Bad = Callable[[str, str], None]
"""Notes a problem with a route's key: (key, message)."""


@dataclass(frozen=True)
class PublishTarget:
    """Templates of the outbound (cache, topic)."""

    cache: str
    topic: str


@dataclass(frozen=True)
class CacheTarget:
    """Templates of the write-through (cache, key) and its TTL."""

    cache: str
    key: str
    ttl_seconds: int


class Problems:
    """Collects problems with their lines, so one error names all of them."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.headers = [
            i + 1
            for i, line in enumerate(self.lines)
            if re.match(r"^\s*\[\[\s*routes\s*\]\]", line)
        ]
        self.found: list[str] = []

    def route_line(self, index: int) -> int:
        """Line of the index-th ``[[routes]]`` header (1 if routes are written inline)."""
        return self.headers[index] if index < len(self.headers) else 1

    def key_line(self, index: int, key: str) -> int:
        """Line where route ``index`` sets ``key`` (its header line if not found)."""
        start = self.route_line(index)
        end = self.headers[index + 1] if index + 1 < len(self.headers) else len(self.lines) + 1
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for number in range(start, end):
            if pattern.match(self.lines[number - 1]):
                return number
        return start

    def add(self, line: int, message: str) -> None:
        self.found.append(f"{self.path}:{line}: {message}")

    def of_route(self, item: dict[str, Any], index: int) -> Callable[[str, str], None]:
        """``bad(key, message)`` for route ``index``: a problem at the line setting ``key``,
        labelled with the route's name (or its number while it has none)."""
        name = item.get("name")
        label = f"route {name!r}" if isinstance(name, str) else f"route #{index + 1}"

        def bad(key: str, message: str) -> None:
            self.add(self.key_line(index, key), f"{label}: {message}")

        return bad


def template_table(
    item: dict[str, Any],
    key: str,
    known: set[str],
    bad: Bad,
    change_fields: re.Pattern[str] | None = None,
) -> dict[str, Any] | None:
    """Validate an optional inline table of templates; None when absent or invalid.

    ``change_fields``: the table belongs to a changes route without a workflow, whose templates
    may name only the record's fields.
    """
    if key not in item:
        return None
    table = item[key]
    if not isinstance(table, dict):
        bad(key, f"{key} must be a table like {{ {', '.join(sorted(known))} }}")
        return None
    ok = True
    for extra in sorted(set(table) - known):
        bad(key, f"{key} has unknown key {extra!r}; known: {sorted(known)}")
        ok = False
    for name in sorted(known - {"ttl_seconds"}):
        value = table.get(name)
        if not isinstance(value, str) or not value:
            bad(key, f"{key}.{name} must be a non-empty string, got {value!r}")
            ok = False
            continue
        try:
            used = template_fields(value, dotted=change_fields is not None)
        except ValueError as exc:
            bad(key, f"{key}.{name} {value!r}: {exc}")
            ok = False
            continue
        unknown = [field for field in used if change_fields and not change_fields.match(field)]
        if unknown:
            bad(
                key,
                f"{key}.{name} {value!r}: unknown field(s) {unknown}; a change record has "
                "{source}, {table}, {op}, {keys.NAME}, {new.NAME}, {old.NAME}",
            )
            ok = False
    return table if ok else None


def check_ttl(cache_set: dict[str, Any] | None, bad: Bad) -> None:
    """A cache_set's ttl_seconds must be a whole number of seconds Momento accepts."""
    ttl = cache_set.get("ttl_seconds") if cache_set else None
    if cache_set and (
        not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL_S
    ):
        bad("cache_set", f"cache_set.ttl_seconds must be an integer in 1..{MAX_TTL_S}, got {ttl!r}")
