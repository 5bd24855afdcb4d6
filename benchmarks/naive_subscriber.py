"""The naive subscriber the listen benchmark compares against: what a first version would do.

The SDK's plain async subscribe loop, one per topic, calls ``store.delay(...)`` for every item;
a Celery worker (its own app, on the same broker, queue ``naive``) inserts each item with one
ORM insert and one commit. No batching, no group commit, no positions: the baseline for
``pipeline listen``. Rows go to ``events`` under their own cache name, so counts do not mix.

    python benchmarks/naive_subscriber.py subscribe HOST:PORT CACHE SECONDS TOPIC...
    python benchmarks/naive_subscriber.py worker -c 2            # any `celery worker` options

Both read CELERY_BROKER_URL (and the worker DATABASE_URL). The subscriber prints ``ready``
once every stream is open. It is bounded: SIGALRM ends it after SECONDS whatever the SDK does,
and its address space is capped, because an SDK stream that ends makes the async iterator spin
and leak (MOMENTO.md E.2); the long client timeout keeps streams from ending at 5 s (E.1).
"""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from celery import Celery
from sqlalchemy import Engine, create_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MEMORY_CAP_BYTES = 2 * 1024**3
QUEUE = "naive"

app = Celery("naive", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@functools.cache
def _engine() -> Engine:
    return create_engine(os.environ["DATABASE_URL"], pool_size=2)


@app.task(name="naive.store")  # type: ignore[untyped-decorator]
def store(cache: str, topic: str, page: int, seq: int, text: str, received_ms: int) -> None:
    """Insert one item as one ORM object in its own transaction (a duplicate is skipped)."""
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session

    from pipeline.models import Event, EventSource

    with Session(_engine()) as session:
        session.add(
            Event(
                cache=cache,
                topic=topic,
                topic_sequence_number=seq,
                sequence_page=page,
                event_timestamp=received_ms,
                text=text,
                received_at=datetime.fromtimestamp(received_ms / 1000, tz=UTC),
                source=EventSource.SUBSCRIPTION,
                idempotency_key=f"p{page}:{seq}",
            )
        )
        try:
            session.commit()
        except IntegrityError:
            session.rollback()


async def subscribe(address: str, cache: str, topics: list[str]) -> None:
    """The SDK's own loop per topic, one task per item."""
    from momento import CredentialProvider, TopicClientAsync, TopicConfigurations
    from momento.responses import TopicSubscribe, TopicSubscriptionItem

    host, port = address.rsplit(":", 1)
    config = TopicConfigurations.Default.latest().with_client_timeout(timedelta(days=1))
    config = config.with_max_subscriptions(len(topics) + 10)
    client = TopicClientAsync(config, CredentialProvider.for_momento_local(host, int(port)))
    subs = []
    for topic in topics:
        sub = await client.subscribe(cache, topic)
        if not isinstance(sub, TopicSubscribe.SubscriptionAsync):
            raise SystemExit(f"subscribe {cache}/{topic} failed: {sub}")
        subs.append((topic, sub))

    async def consume(topic: str, sub: TopicSubscribe.SubscriptionAsync) -> None:
        async for item in sub:
            if isinstance(item, TopicSubscriptionItem.Text):
                now_ms = int(time.time() * 1000)
                store.delay(
                    cache, topic, item.sequence_page, item.sequence_number, item.value, now_ms
                )

    print("ready", flush=True)
    await asyncio.gather(*(consume(topic, sub) for topic, sub in subs))


def main() -> None:
    """``subscribe ...`` or ``worker ...``."""
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        app.worker_main(["worker", "-Q", QUEUE, "--loglevel", "WARNING", *sys.argv[2:]])
        return
    if len(sys.argv) < 6 or sys.argv[1] != "subscribe":
        raise SystemExit(__doc__)
    address, cache, seconds, topics = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))
    signal.alarm(seconds)  # the default action ends the process, even if the SDK loop spins
    asyncio.run(subscribe(address, cache, topics))


if __name__ == "__main__":
    main()
