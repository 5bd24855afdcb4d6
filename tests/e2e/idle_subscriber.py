"""A subscriber left idle: ``python -m tests.e2e.idle_subscriber HOST:PORT CACHE TOPIC``.

Opens the listener's subscription (``ResilientSubscriptionAsync``, stall watchdog as in
``pipeline listen``) and a plain sync SDK subscription on a thread, both through the official
SDK, prints ``ready``, then one line per event: ``message <text> reconnects=<n>`` (the listener's)
or ``sync <text>`` (the plain one), or ``gap ...``. Its address space is capped, so an SDK
stream that spins (MOMENTO.md E.2) fails this process instead of the machine.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import threading

from momento.responses import TopicSubscribe, TopicSubscriptionItem

from pipeline.outbound.subscriptions import Message
from pipeline.outbound.subscriptions_async import ResilientSubscriptionAsync
from pipeline.sources.listener import STALL_S
from tests.integration.emulator_support import topic_client, topic_client_async

MEMORY_CAP_BYTES = 2 * 1024**3


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def plain_sync(port: int, cache: str, topic: str) -> threading.Thread:
    """A sync SDK subscription with no watchdog, read on a thread: whether the bare stream
    outlives the quiet (the demo's and the tests' subscriptions are sync ones)."""
    subscription = topic_client(port).subscribe(cache, topic)
    assert isinstance(subscription, TopicSubscribe.Subscription), subscription

    def read() -> None:
        for item in subscription:
            if isinstance(item, TopicSubscriptionItem.Text):
                say(f"sync {item.value}")

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


async def main(address: str, cache: str, topic: str) -> None:
    port = int(address.rsplit(":", 1)[1])
    plain_sync(port, cache, topic)
    client = topic_client_async(port)
    sub = ResilientSubscriptionAsync(client, cache, topic, stall_timeout_s=STALL_S)
    await sub.start()
    say("ready")
    try:
        async for event in sub:
            if isinstance(event, Message):
                say(f"message {event.value!s} reconnects={sub.reconnects}")
            else:
                say(f"gap {event}")
    finally:
        await sub.close()
        await client.close()


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))
    asyncio.run(main(*sys.argv[1:4]))
