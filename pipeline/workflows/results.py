"""What a route's workflow is given, what it may return, and how it is started.

A workflow is named ``module:attribute`` in the routes file and is either

- a Celery task taking the event (a dict, see ``event_view``); the workflow stage calls its body
  in the worker that runs the route, so its result commits with the outbox row without another
  broker hop; or
- a function taking the event and returning a Celery canvas (a signature, chain, group or chord);
  the canvas runs on the workers and a final callback (``tasks.workflows.complete``) commits its
  result.

The result (of the task, or of the canvas's last step) is None (nothing to send), a string (the
text to publish and to cache) or a dict built with ``output``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any, Literal

from celery import Task
from celery.canvas import Signature

CacheAction = Literal["set", "delete", "skip"]
CACHE_ACTIONS = ("set", "delete", "skip")
OUTPUT_KEYS = {"text", "value", "publish", "cache", "fields"}


def output(
    text: str | None = None,
    *,
    value: str | None = None,
    publish: bool = True,
    cache: CacheAction = "set",
    **fields: str | int | float,
) -> dict[str, Any]:
    """A workflow result: ``text`` to publish, ``value`` to cache (default: text), template fields.

    ``publish=False`` sends nothing to the route's topic; ``cache="delete"`` deletes the route's
    cache key instead of setting it, ``cache="skip"`` leaves it alone. ``fields`` fill the route's
    templates, e.g. ``output(record, location="paris")`` for ``key = "weather:{location}"``.
    """
    return {"text": text, "value": value, "publish": publish, "cache": cache, "fields": fields}


@dataclass(frozen=True)
class Output:
    """A workflow result, checked."""

    text: str | None
    value: str | None
    fields: Mapping[str, str] = field(default_factory=dict)
    publish: bool = True
    cache: CacheAction = "set"

    @property
    def cache_value(self) -> str | None:
        """What a cache set stores: ``value``, else ``text``."""
        return self.value if self.value is not None else self.text


def parse_output(result: Any) -> Output | None:
    """Check a workflow's result; ValueError says what is wrong with it."""
    if result is None:
        return None
    if isinstance(result, str):
        return Output(text=result, value=None)
    if not isinstance(result, Mapping):
        raise ValueError(
            f"a workflow must return None, a str or pipeline.workflows.output(...), "
            f"got {type(result).__name__}"
        )
    unknown = sorted(set(result) - OUTPUT_KEYS)
    if unknown:
        raise ValueError(
            f"workflow result has unknown key(s) {unknown}; known {sorted(OUTPUT_KEYS)}"
        )
    text, value = result.get("text"), result.get("value")
    for name, item in (("text", text), ("value", value)):
        if item is not None and not isinstance(item, str):
            raise ValueError(f"workflow result {name} must be a str or None, got {item!r}")
    action = result.get("cache", "set")
    if action not in CACHE_ACTIONS:
        raise ValueError(f"workflow result cache must be one of {CACHE_ACTIONS}, got {action!r}")
    fields = result.get("fields") or {}
    if not isinstance(fields, Mapping) or not all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in fields.values()
    ):
        raise ValueError(f"workflow result fields must map names to str/int/float, got {fields!r}")
    return Output(
        text=text,
        value=value,
        fields={str(k): str(v) for k, v in fields.items()},
        publish=bool(result.get("publish", True)),
        cache=action,
    )


def event_view(row: Any) -> dict[str, Any]:
    """The event as a workflow sees it (JSON-safe, so it can travel in a canvas)."""
    received: datetime | None = row.received_at
    return {
        "id": int(row.id),
        "cache": row.cache,
        "topic": row.topic,
        "sequence_number": int(row.topic_sequence_number),
        "epoch": row.epoch,
        "text": row.text,
        "event_timestamp": row.event_timestamp,
        "publish_timestamp": row.publish_timestamp,
        "token_id": row.token_id,
        "received_at": received.isoformat() if received else None,
    }


@dataclass(frozen=True)
class Workflow:
    """A resolved ``module:attribute``: a task run in place, or a canvas factory."""

    spec: str
    target: Any = field(compare=False, repr=False)
    is_task: bool

    def call(self, event: dict[str, Any]) -> Any:
        """Run a task workflow's body here and return its result."""
        return self.target(event)

    def canvas(self, event: dict[str, Any]) -> Signature:
        """The canvas a factory builds for ``event``; TypeError if it returns something else."""
        built = self.target(event)
        if not isinstance(built, Signature):
            raise TypeError(
                f"workflow {self.spec} must return a Celery signature/chain/group/chord, "
                f"got {type(built).__name__}"
            )
        return built


@cache
def resolve_workflow(spec: str) -> Workflow:
    """Import ``module:attribute``; TypeError if it is neither a Celery task nor a callable."""
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise AttributeError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if isinstance(target, Task):
        return Workflow(spec, target, is_task=True)
    if isinstance(target, Signature) or not callable(target):
        raise TypeError(
            "must be a Celery task or a function taking the event and returning a canvas"
        )
    return Workflow(spec, target, is_task=False)
