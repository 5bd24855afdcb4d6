"""End-to-end fixtures: the idle subscription opened when the first end-to-end test starts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import IdleSubscription


@pytest.fixture(scope="session", autouse=True)
def idle_subscription() -> Iterator[IdleSubscription]:
    """Opened with the first end-to-end test (they run first), checked by the session's last
    test (``IDLE_CHECK``): five idle minutes cost nothing while the other tests fill them."""
    idle = IdleSubscription()
    yield idle
    idle.stop()
