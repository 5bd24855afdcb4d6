"""Local Momento-compatible server: the SDK's topics and cache, signed webhooks, faults.

Use ``EmulatorServer`` from Python (tests run it in a thread on port 0) or the ``emulator``
click command (``pipeline emulator`` / ``python -m pipeline.emulator``) as a process.
"""

from pipeline.emulator.delivery import DeliveryStats
from pipeline.emulator.faults import FaultSpec
from pipeline.emulator.server import EmulatorServer
from pipeline.emulator.webhooks import USER_AGENT, Webhook, build_body, sign

__all__ = [
    "USER_AGENT",
    "DeliveryStats",
    "EmulatorServer",
    "FaultSpec",
    "Webhook",
    "build_body",
    "sign",
]
