"""Webhook registrations and Momento's delivery format (body, signature, headers).

One webhook per (cache, topic), pointing at one URL, with a signing secret the server makes (or is
given). Deliveries themselves live in ``pipeline.emulator.delivery``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

USER_AGENT = "Momento/1.0 (Webhooks; +https://docs.momentohq.com/topics/webhooks)"
SIGNATURE_HEADER = "momento-signature"
MAX_URL_CHARS = 1024


def sign(secret: str, body: bytes) -> str:
    """Lowercase hex HMAC-SHA3-256 of the raw body, as Momento's ``momento-signature``."""
    return hmac.new(secret.encode(), body, hashlib.sha3_256).hexdigest()


def build_body(
    *,
    cache: str,
    topic: str,
    event_timestamp_ms: int,
    publish_timestamp_ms: int,
    sequence_number: int,
    text: str,
    token_id: str = "",
) -> bytes:
    """The exact JSON body Momento POSTs, fields in Momento's documented order."""
    payload = {
        "cache": cache,
        "topic": topic,
        "event_timestamp": event_timestamp_ms,
        "publish_timestamp": publish_timestamp_ms,
        "topic_sequence_number": sequence_number,
        "token_id": token_id,
        "text": text,
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def headers(body: bytes, secret: str) -> dict[str, str]:
    """Request headers of one delivery."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        SIGNATURE_HEADER: sign(secret, body),
    }


def new_secret() -> str:
    """A fresh signing secret."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Webhook:
    """A registration: deliveries of (cache, topic) go to ``url``, signed with ``secret``."""

    cache: str
    topic: str
    url: str
    secret: str

    def public(self) -> dict[str, Any]:
        """A description without the secret (for listings and logs)."""
        return {"cache": self.cache, "topic": self.topic, "url": self.url}


def _check(cache: str, topic: str, url: str) -> None:
    if not cache or not topic:
        raise ValueError(f"cache and topic must be non-empty, got {cache!r}/{topic!r}")
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"url must be at most {MAX_URL_CHARS} characters, got {len(url)}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"url must be an absolute http(s) URL, got {url!r}")


class WebhookRegistry:
    """The webhooks of one emulator, by (cache, topic); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: dict[tuple[str, str], Webhook] = {}

    def register(self, cache: str, topic: str, url: str, secret: str | None = None) -> Webhook:
        """Create or replace the webhook of (cache, topic); the secret is made if not given."""
        _check(cache, topic, url)
        if secret is not None and not secret:
            raise ValueError("secret must be non-empty when given")
        hook = Webhook(cache, topic, url, secret or new_secret())
        with self._lock:
            self._hooks[(cache, topic)] = hook
        return hook

    def get(self, cache: str, topic: str) -> Webhook | None:
        """The webhook of (cache, topic), if any."""
        return self._hooks.get((cache, topic))

    def delete(self, cache: str, topic: str) -> bool:
        """Remove a webhook; False if there was none."""
        with self._lock:
            return self._hooks.pop((cache, topic), None) is not None

    def rotate_secret(self, cache: str, topic: str) -> str:
        """Replace the secret at once (no overlap, as Momento); KeyError if no such webhook."""
        with self._lock:
            hook = self._hooks[(cache, topic)]
            rotated = Webhook(hook.cache, hook.topic, hook.url, new_secret())
            self._hooks[(cache, topic)] = rotated
        return rotated.secret

    def all(self) -> list[Webhook]:
        """Every webhook, ordered by (cache, topic)."""
        with self._lock:
            return [self._hooks[key] for key in sorted(self._hooks)]

    def __bool__(self) -> bool:
        return bool(self._hooks)
