"""A subscriber left idle: ``python -m tests.e2e.idle_subscriber HOST:PORT CACHE TOPIC``.

Opens the listener's subscription (``ResilientSubscriptionAsync``, stall watchdog as in
``pipeline listen``) through the official SDK, prints ``ready``, then one line per event:
``message <text> reconnects=<n>``, or ``gap ...``. Its address space is capped, so an SDK
stream that spins (MOMENTO.md E.2) fails this process instead of the machine.
"""

from __future__ import annotations

import asyncio
import resource
import sys

from pipeline.outbound.subscriptions import Message
from pipeline.outbound.subscriptions_async import ResilientSubscriptionAsync
from pipeline.sources.listener import STALL_S
from tests.integration.emulator_support import topic_client_async

MEMORY_CAP_BYTES = 2 * 1024**3


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(address: str, cache: str, topic: str) -> None:
    port = int(address.rsplit(":", 1)[1])
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
