"""``[[routes]]`` tables that take change records (``changes = "source:table"``) instead of topic
events: how one is checked and what it holds (docs/changes.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

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

CHANGE_ROUTE_KEYS = {"name", "changes", "workflow", "publish", "cache_set"}
CHANGE_FIELD_RE = re.compile(r"^(source|table|op|(keys|new|old)\.[^{}:!\s]+)$")
"""Template fields a change route may name without a workflow (one adds its result's fields)."""


@dataclass(frozen=True)
class ChangeRoute:
    """A ``[[routes]]`` table with ``changes = "source:table"``: where change records go."""

    name: str
    source: str
    table: str
    workflow: str | None = None
    publish: PublishTarget | None = None
    cache_set: CacheTarget | None = None
    line: int = 0

    def matches(self, source: str, table: str) -> bool:
        """Whether a change record of (source, table) runs this route."""
        return fnmatchcase(source, self.source) and fnmatchcase(table, self.table)


def parse_change_route(
    item: dict[str, Any], index: int, problems: Problems, resolve: bool
) -> ChangeRoute | None:
    before = len(problems.found)
    line = problems.route_line(index)
    name = item.get("name")
    bad = problems.of_route(item, index)

    for key in sorted(set(item) - CHANGE_ROUTE_KEYS):
        bad(key, f"unknown key {key!r} in a changes route; known: {sorted(CHANGE_ROUTE_KEYS)}")
    if not isinstance(name, str) or not NAME_RE.match(name):
        bad("name", f"name must match {NAME_RE.pattern}, got {name!r}")
    changes = item.get("changes")
    source, sep, table = changes.partition(":") if isinstance(changes, str) else ("", "", "")
    if not (source and sep and table):
        bad("changes", f'changes must be "source:table" (globs allowed), got {changes!r}')
    workflow = item.get("workflow")
    if workflow is not None:
        if not isinstance(workflow, str) or not WORKFLOW_RE.match(workflow):
            bad("workflow", f"workflow must be 'module:attribute', got {workflow!r}")
        elif resolve:
            try:
                from pipeline.workflows.results import resolve_workflow

                if not resolve_workflow(workflow).is_task:
                    bad("workflow", f"workflow {workflow!r}: a changes route runs a Celery task")
            except (ImportError, AttributeError, TypeError) as exc:
                bad("workflow", f"workflow {workflow!r} cannot be used: {exc}")
    fields = None if workflow is not None else CHANGE_FIELD_RE
    publish = template_table(item, "publish", PUBLISH_KEYS, bad, fields)
    cache_set = template_table(item, "cache_set", CACHE_SET_KEYS, bad, fields)
    check_ttl(cache_set, bad)
    if "publish" not in item and "cache_set" not in item:
        bad("changes", "a changes route needs publish, cache_set or both")
    if len(problems.found) > before:
        return None
    return ChangeRoute(
        name=str(name),
        source=source,
        table=table,
        workflow=workflow,
        publish=PublishTarget(**publish) if publish else None,
        cache_set=CacheTarget(**cache_set) if cache_set else None,
        line=line,
    )
