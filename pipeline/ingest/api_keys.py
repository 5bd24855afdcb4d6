"""Who may post change records: the credentials an EventBridge connection sends.

An EventBridge connection authorizes an API destination with an API key in a header of its
choosing (``x-api-key`` here by default) or with basic auth. Several keys may be valid at once
(``PIPELINE_CHANGE_API_KEYS=new,old`` while a connection is rotated). Every configured
credential is compared, in constant time, whatever matched first: the time a refusal takes says
nothing about how close a guess came.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable

from pipeline.errors import BadApiKey


class ChangeAuth:
    """Checks a request's headers against the configured API keys and basic-auth pairs."""

    def __init__(self, header: str, api_keys: Iterable[str], basic: Iterable[str] = ()) -> None:
        self.header = header.lower().encode("latin-1")
        self.api_keys = [key.encode() for key in api_keys]
        self.basic = [pair.encode() for pair in basic]

    @property
    def configured(self) -> bool:
        """Whether any credential is configured (without one, every request is refused)."""
        return bool(self.api_keys or self.basic)

    def check(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Raise BadApiKey unless the headers carry a configured API key or basic-auth pair."""
        if not self.configured:
            raise BadApiKey(
                "no change-record credentials are configured (PIPELINE_CHANGE_API_KEYS or "
                "PIPELINE_CHANGE_BASIC_AUTH): every request is refused"
            )
        offered_key = offered_basic = None
        for name, value in headers:
            if name == self.header:
                offered_key = value
            elif name == b"authorization":
                offered_basic = _basic_credentials(value)
        matched = False
        if offered_key is not None:
            matched |= _any_equal(offered_key, self.api_keys)
        if offered_basic is not None:
            matched |= _any_equal(offered_basic, self.basic)
        if not matched:
            if offered_key is None and offered_basic is None:
                detail = f"missing {self.header.decode()} header (or basic auth)"
            else:
                detail = "API key (or basic auth) matches no configured credential"
            raise BadApiKey(detail)


def _any_equal(offered: bytes, configured: list[bytes]) -> bool:
    """Compare with every configured value, in constant time each, without stopping early."""
    found = False
    for candidate in configured:
        found |= hmac.compare_digest(offered, candidate)
    return found


def _basic_credentials(value: bytes) -> bytes | None:
    """The ``user:password`` of an ``Authorization: Basic ...`` header; None for other schemes."""
    scheme, _, encoded = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        return base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b""
