"""Webhook deliveries are logged at DEBUG each and summarised at INFO once a minute."""

from __future__ import annotations

import logging

import pytest

from pipeline.emulator.delivery import Delivery, Dispatcher
from pipeline.emulator.faults import FaultRegistry
from pipeline.emulator.loop import BackgroundLoop
from pipeline.emulator.webhooks import WebhookRegistry


def test_summary_logs_what_changed_since_the_last_one(caplog: pytest.LogCaptureFixture) -> None:
    loop = BackgroundLoop()
    faults: FaultRegistry[Delivery] = FaultRegistry(1)
    dispatcher = Dispatcher(loop, WebhookRegistry(), faults)
    try:
        dispatcher._stats[("c", "t")].attempted = 3
        dispatcher._stats[("c", "t")].delivered = 2
        dispatcher.stats("c", "quiet")  # seen but never used: not summarised
        with caplog.at_level(logging.INFO, logger="pipeline.emulator.delivery"):
            dispatcher._summarise()
            dispatcher._summarise()  # nothing new: nothing logged
            dispatcher._stats[("c", "t")].timed_out = 1
            dispatcher._summarise()
        lines = [record.getMessage() for record in caplog.records]
        assert len(lines) == 2
        assert "cache=c topic=t last_s=60 attempted=3 delivered=2 failed=0 timed_out=0" in lines[0]
        assert "attempted=0 delivered=0 failed=0 timed_out=1" in lines[1]
    finally:
        loop.loop.close()
