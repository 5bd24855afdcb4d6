"""`pipeline demo`'s change records: the weather stations as a DynamoDB table.

Posts the stream records an EventBridge pipe would deliver to ``POST /changes/dynamodb`` (INSERT
three stations, MODIFY one, REMOVE one, then a MODIFY of the removed station made before its
REMOVE but delivered after it), and checks with the official SDK what the sample route
``weather-stations`` promises: each station's item in the ``weather`` cache, the removed one
gone (and not brought back by the late MODIFY), and every applied change on the
``station-changes`` topic.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import click
import httpx
from sqlalchemy import text

from pipeline.cli.demo_run import aligned
from pipeline.cli.stack import Stack, change_api_key
from pipeline.db import get_engine
from pipeline.outbound import momento_client
from pipeline.outbound.subscriptions import Message, ResilientSubscription

SOURCE = "dynamodb"
TABLE = "weather-stations"
CACHE = "weather"
TOPIC = "station-changes"
KEY = "station:{location}"  # the weather-stations route's cache_set.key in routes.toml
ARN = f"arn:aws:dynamodb:eu-west-1:123456789012:table/{TABLE}/stream/2026-12-01T00:00:00.000"


def _attributes(item: dict[str, Any]) -> dict[str, Any]:
    """A station as DynamoDB JSON (strings and numbers are all it has)."""
    return {k: {"S": v} if isinstance(v, str) else {"N": str(v)} for k, v in item.items()}


def stream_record(
    event: str, seq: int, location: str, new: dict[str, Any] | None, old: dict[str, Any] | None
) -> dict[str, Any]:
    """One DynamoDB stream record as an EventBridge pipe passes it to an API destination."""
    dynamodb: dict[str, Any] = {
        "ApproximateCreationDateTime": int(time.time()),
        "Keys": _attributes({"location": location}),
        "SequenceNumber": f"{4200000000000000000000 + seq}",
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if new is not None:
        dynamodb["NewImage"] = _attributes(new)
    if old is not None:
        dynamodb["OldImage"] = _attributes(old)
    return {
        "eventID": f"demo-{TABLE}-{seq}-{time.time_ns()}",
        "eventName": event,
        "eventSource": "aws:dynamodb",
        "eventSourceARN": ARN,
        "dynamodb": dynamodb,
    }


def _station(location: str, temp: str) -> dict[str, Any]:
    return {"location": location, "temp_c": Decimal(temp)}


def scenario() -> list[list[dict[str, Any]]]:
    """The posts in delivery order (each a batch, as a pipe sends them).

    Sequence numbers grow from run to run (from the run's start time), as a table's stream does:
    a demo run again on the same data folder is newer than the last one, not stale.
    """
    base = int(time.time() * 1000) * 100
    paris, lagos = _station("Paris", "18.5"), _station("Lagos", "29.0")
    osaka = _station("Osaka", "12.25")
    warmer = _station("Paris", "21.0")
    late = _station("Osaka", "13.0")
    return [
        [
            stream_record("INSERT", base + 1, "Paris", paris, None),
            stream_record("INSERT", base + 2, "Lagos", lagos, None),
        ],
        [stream_record("INSERT", base + 3, "Osaka", osaka, None)],
        [stream_record("MODIFY", base + 4, "Paris", warmer, paris)],
        [stream_record("REMOVE", base + 6, "Osaka", None, osaka)],
        [stream_record("MODIFY", base + 5, "Osaka", late, osaka)],  # made before the REMOVE
    ]


@dataclass
class ChangeDemo:
    """What the change-record part of the demo saw."""

    posted: int = 0
    event_ids: list[str] = field(default_factory=list)
    stored: int = 0
    cached: dict[str, Any] = field(default_factory=dict)
    announced: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """All stored; Paris modified, Lagos inserted, Osaka removed and not resurrected; the
        five applied changes announced."""
        done = self.stored >= self.posted and len(self.announced) == 5
        return done and self.cached == EXPECTED_CACHE


EXPECTED_CACHE = {
    "Paris": {"location": "Paris", "temp_c": 21.0},
    "Lagos": {"location": "Lagos", "temp_c": 29.0},
    "Osaka": None,
}


def run_change_demo(stack: Stack, timeout_s: float) -> bool:
    """Post the scenario, wait for the cache and the topic, print what happened."""
    settings = stack.settings
    url = f"{stack.receiver_url}/changes/{SOURCE}"
    headers = {
        "content-type": "application/json",
        settings.pipeline_change_api_key_header: change_api_key(settings),
    }
    caches = momento_client.cache_client(settings)
    reader = momento_client.topic_client(settings, max_subscriptions=1)
    subscription = ResilientSubscription(reader, CACHE, TOPIC).start()
    demo = ChangeDemo()
    try:
        for batch in scenario():
            body = json.dumps(batch)
            response = httpx.post(url, content=body, headers=headers, timeout=10.0)
            response.raise_for_status()
            demo.posted += len(batch)
            demo.event_ids += [record["eventID"] for record in batch]

        def read_cache() -> dict[str, Any]:
            found = {}
            for location in EXPECTED_CACHE:
                value = momento_client.cache_get(caches, CACHE, KEY.format(location=location))
                found[location] = None if value is None else json.loads(value)
            return found

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            event = subscription.poll(0.2)
            if isinstance(event, Message):
                value = event.value if isinstance(event.value, str) else event.value.decode()
                demo.announced.append(json.loads(json.loads(value)["text"]))
            if len(demo.announced) >= 5:
                demo.stored = _stored(stack, demo.event_ids)
                demo.cached = read_cache()
                if demo.ok:
                    break
    finally:
        subscription.close()
        momento_client.close_client(reader)
        momento_client.close_client(caches)
    _print(demo)
    return demo.ok


def _stored(stack: Stack, event_ids: list[str]) -> int:
    """This run's records stored (a run again on the same data folder counts its own)."""
    keys = [f"ddb:{event_id}" for event_id in event_ids]
    with get_engine(stack.settings).connect() as conn:
        query = text(
            "SELECT count(*) FROM change_records WHERE source = :s AND idempotency_key = ANY(:k)"
        )
        return int(conn.execute(query, {"s": SOURCE, "k": keys}).scalar_one())


def _print(demo: ChangeDemo) -> None:
    rows = [
        ("records posted", f"{demo.posted}   (INSERT x3, MODIFY, REMOVE, a late MODIFY)"),
        ("records stored", str(demo.stored)),
    ]
    for location, item in demo.cached.items():
        shown = "deleted" if item is None else json.dumps(item)
        rows.append((f"cache {KEY.format(location=location)}", shown))
    events = ", ".join(f"{m['event']} {m['keys']['location']}" for m in demo.announced)
    rows.append((f"received on {CACHE}/{TOPIC}", f"{len(demo.announced)}: {events}"))
    rows.append(("never stale", f"{demo.ok}   (the late MODIFY did not bring Osaka back)"))
    click.echo("")
    click.echo(aligned(f"change records (POST /changes/{SOURCE}, table {TABLE})", rows))
