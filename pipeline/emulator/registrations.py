"""Caches, webhooks and faults declared in a TOML or JSON file, applied at start.

Example (TOML; the same keys work in JSON):

    caches = ["chat"]

    [[webhooks]]
    cache = "chat"
    topic = "room-1"
    url = "http://127.0.0.1:8000/webhooks/momento"
    secret = "optional; generated when absent"

    [[faults]]
    cache = "chat"
    topic = "room-*"          # globs allowed
    drop = 0.1
    delay_ms = 50
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.emulator.faults import FaultSpec

if TYPE_CHECKING:
    from pipeline.emulator.server import EmulatorServer


@dataclass(frozen=True)
class WebhookEntry:
    """One webhook to register; ``secret`` None means the server makes one."""

    cache: str
    topic: str
    url: str
    secret: str | None = None


@dataclass(frozen=True)
class FaultEntry:
    """Faults for topics matching (cache, topic) globs."""

    cache: str
    topic: str
    spec: FaultSpec


@dataclass(frozen=True)
class Registrations:
    """Everything a registrations file declares."""

    caches: tuple[str, ...] = ()
    webhooks: tuple[WebhookEntry, ...] = ()
    faults: tuple[FaultEntry, ...] = ()


def _str(entry: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def parse_registrations(data: Mapping[str, Any], source: str = "registrations") -> Registrations:
    """Validate already-decoded TOML/JSON data."""
    unknown = sorted(set(data) - {"caches", "webhooks", "faults"})
    if unknown:
        raise ValueError(f"{source}: unknown top-level key(s) {unknown}")
    caches = data.get("caches", [])
    if not isinstance(caches, list) or not all(isinstance(c, str) and c for c in caches):
        raise ValueError(f"{source}: caches must be a list of names")
    hooks = []
    for i, entry in enumerate(data.get("webhooks", [])):
        where = f"{source}: webhooks[{i}]"
        secret = entry.get("secret")
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise ValueError(f"{where}: secret must be a non-empty string when given")
        hooks.append(
            WebhookEntry(
                _str(entry, "cache", where),
                _str(entry, "topic", where),
                _str(entry, "url", where),
                secret,
            )
        )
    faults = []
    for i, entry in enumerate(data.get("faults", [])):
        where = f"{source}: faults[{i}]"
        options = {k: v for k, v in entry.items() if k not in ("cache", "topic")}
        try:
            spec = FaultSpec.from_mapping(options)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from exc
        faults.append(
            FaultEntry(_str(entry, "cache", where, "*"), _str(entry, "topic", where, "*"), spec)
        )
    return Registrations(tuple(caches), tuple(hooks), tuple(faults))


def load_registrations(path: Path) -> Registrations:
    """Read a ``.toml`` file, or JSON for any other suffix."""
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a table/object")
    return parse_registrations(data, str(path))


def apply_registrations(
    emulator: EmulatorServer, registrations: Registrations
) -> list[tuple[WebhookEntry, str]]:
    """Create the caches, webhooks and faults; returns each webhook with its secret."""
    for cache in registrations.caches:
        emulator.create_cache(cache)
    for fault in registrations.faults:
        emulator.set_faults(fault.cache, fault.topic, fault.spec)
    return [
        (hook, emulator.register_webhook(hook.cache, hook.topic, hook.url, hook.secret))
        for hook in registrations.webhooks
    ]
