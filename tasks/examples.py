"""Example workflows, wired up by the sample ``routes.toml`` at the repository root.

- ``uppercase``: relay ``topic 1`` to ``topic 2`` in capitals (a task, ordered).
- ``moderate``: mask banned words in a chat room's message and publish it to the room's moderated
  topic (a chord: two checks in parallel, then a verdict).
- ``weather``: keep the latest record per location in Momento cache and announce the change on a
  topic (a chain: parse, then compare with the previous record).
- ``fx_rate`` / ``fx_order``: cache each pair's latest rate with a short TTL; accept an order if a
  live cached rate satisfies its limit, else expire it.
- ``station_headline``: a ``changes`` route's workflow: a weather station's change record as a
  one-line headline on the topic (the cache still gets the whole item).

Every workflow receives the event as a dict (``pipeline.workflows.results.event_view``); a
``changes`` route's receives the change record (``pipeline.ingest.changes.ChangeRecord.view``).
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import simplejson
from celery import chain, chord, group
from celery.canvas import Signature

from pipeline.celery_app import app
from pipeline.config import get_settings
from pipeline.db import get_engine
from pipeline.outbound import momento_client
from pipeline.workflows.outbox import latest_cache_value
from pipeline.workflows.results import output

BANNED_WORDS = ("darn", "heck", "frak")
WEATHER_KEY = "latest:{location}"  # the weather route's cache_set.key in routes.toml
FX_KEY = "rate:{pair}"  # the fx-rates route's cache_set.key in routes.toml
_BANNED = re.compile(r"\b(" + "|".join(BANNED_WORDS) + r")\b", re.IGNORECASE)


@app.task(name="tasks.examples.uppercase")
def uppercase(event: dict[str, Any]) -> str:
    """The seed scenario: the message, in capitals."""
    return str(event["text"]).upper()


# -- chat moderation (a chord) -------------------------------------------------------------------


@app.task(name="tasks.examples.mask_words", ignore_result=False)
def mask_words(text: str) -> str:
    """Replace each banned word's inner letters with asterisks ("darn" -> "d**n")."""
    return _BANNED.sub(lambda m: m.group(0)[0] + "*" * (len(m.group(0)) - 2) + m.group(0)[-1], text)


@app.task(name="tasks.examples.count_flags", ignore_result=False)
def count_flags(text: str) -> int:
    """How many banned words the message holds."""
    return len(_BANNED.findall(text))


@app.task(name="tasks.examples.verdict")
def verdict(results: list[Any], room: str) -> dict[str, Any]:
    """Join the checks: the masked text, published with how many words were masked."""
    masked, flags = results
    return output(json.dumps({"room": room, "text": masked, "masked": flags}), room=room)


def moderate(event: dict[str, Any]) -> Signature:
    """Canvas: mask and count in parallel, then the verdict."""
    text = str(event["text"])
    return chord(group(mask_words.s(text), count_flags.s(text)), verdict.s(event["topic"]))


# -- weather (a chain) ---------------------------------------------------------------------------


@app.task(name="tasks.examples.parse_weather")
def parse_weather(event: dict[str, Any]) -> dict[str, Any]:
    """Check a record ``{"location": "Paris", "temp_c": 18.5}`` and add its location key."""
    record = json.loads(event["text"])
    location = re.sub(r"[^a-z0-9]+", "-", str(record["location"]).lower()).strip("-")
    return {
        "location": location,
        "name": str(record["location"]),
        "temp_c": float(record["temp_c"]),
        "observed_ms": event["event_timestamp"],
    }


@app.task(name="tasks.examples.announce_weather")
def announce_weather(record: dict[str, Any], cache_name: str) -> dict[str, Any]:
    """Cache the record; announce the change against the previous record (none if unchanged)."""
    with get_engine(get_settings()).connect() as conn:
        before = latest_cache_value(conn, cache_name, WEATHER_KEY.format(**record))
    previous = json.loads(before) if before else None
    change = None if previous is None else round(record["temp_c"] - previous["temp_c"], 2)
    value = json.dumps(record, sort_keys=True)
    announcement = json.dumps(
        {"location": record["name"], "temp_c": record["temp_c"], "change_c": change}
    )
    return output(announcement, value=value, publish=change != 0, location=record["location"])


def weather(event: dict[str, Any]) -> Signature:
    """Canvas: parse, then compare with the previous record and announce."""
    return chain(parse_weather.s(event), announce_weather.s(event["cache"]))


# -- FX rates and orders -------------------------------------------------------------------------


@app.task(name="tasks.examples.fx_rate")
def fx_rate(event: dict[str, Any]) -> dict[str, Any]:
    """Cache a rate ``{"pair": "EURUSD", "rate": 1.0842}`` (TTL in routes.toml); publish nothing."""
    quote = json.loads(event["text"])
    pair = str(quote["pair"]).upper()
    value = json.dumps({"pair": pair, "rate": float(quote["rate"]), "at": event["event_timestamp"]})
    return output(value=value, publish=False, pair=pair)


@cache
def _cache_client() -> Any:
    return momento_client.cache_client(get_settings())


@app.task(name="tasks.examples.fx_order")
def fx_order(event: dict[str, Any]) -> str:
    """Accept ``{"id", "pair", "side": "buy"|"sell", "limit"}`` if the live rate meets the limit.

    The rate comes from Momento cache, where it expires (TTL) when the stream stops: an order
    without a live rate, or whose limit the rate does not meet, is expired.
    """
    order = json.loads(event["text"])
    pair = str(order["pair"]).upper()
    cached = momento_client.cache_get(_cache_client(), event["cache"], FX_KEY.format(pair=pair))
    rate = None if cached is None else float(json.loads(cached)["rate"])
    limit = float(order["limit"])
    meets = rate is not None and (rate <= limit if order["side"] == "buy" else rate >= limit)
    status = "accepted" if meets else "expired"
    return json.dumps({"order": order["id"], "pair": pair, "status": status, "rate": rate})


@app.task(name="tasks.examples.station_headline")
def station_headline(change: dict[str, Any]) -> dict[str, Any]:
    """``Paris: 21.5 C`` for an upsert, ``Paris: removed`` for a delete; the cache keeps the
    item as JSON (the route's default), so only the topic's text changes."""
    station = change["keys"].get("location", "?")
    if change["op"] == "delete":
        return output(f"{station}: removed", cache="delete", station=station)
    new = change["new"] or {}
    value = simplejson.dumps(new, use_decimal=True, separators=(",", ":"))
    return output(f"{station}: {new.get('temp_c')} C", value=value, station=station)
