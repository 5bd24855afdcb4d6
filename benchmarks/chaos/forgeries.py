"""Forgeries: requests whose body would be accepted but whose signature or timing is not
genuine (no, empty, random, truncated or SHA-256 signatures, another secret's or another body's,
a body changed after signing, the signature under another header, a stale replay, a publish time
in the future). The receiver must refuse every one.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from benchmarks.chaos.hostile import Hostile, Maker, dumps
from benchmarks.ingest_bench import sign


def forgery_generators(m: Maker) -> list[Callable[[], Hostile]]:
    """Requests whose body would be accepted but whose signature or timing is not genuine."""
    rng = m.rng

    def body(**fields: object) -> bytes:
        return dumps(m.event(**fields)).encode()

    def missing() -> Hostile:
        return m.forged("forgery: no signature", body(), None)

    def empty() -> Hostile:
        return m.forged("forgery: empty signature", body(), "")

    def random_hex() -> Hostile:
        return m.forged("forgery: random signature", body(), f"{rng.getrandbits(256):064x}")

    def other_secret() -> Hostile:
        b = body()
        return m.forged("forgery: other secret", b, sign(b, m.secret + "x"))

    def other_body() -> Hostile:
        return m.forged("forgery: another body's signature", body(), sign(body(), m.secret))

    def tampered() -> Hostile:
        b = body()
        signature = sign(b, m.secret)
        changed = b.replace(b'"hostile"', b'"HOSTILE"')
        return m.forged("forgery: body changed after signing", changed, signature)

    def sha256() -> Hostile:
        b = body()
        return m.forged(
            "forgery: HMAC-SHA256", b, hmac.new(m.secret.encode(), b, hashlib.sha256).hexdigest()
        )

    def truncated() -> Hostile:
        b = body()
        return m.forged("forgery: truncated signature", b, sign(b, m.secret)[:-1])

    def stale() -> Hostile:
        old = int(time.time() * 1000 - m.window_ms - rng.randrange(1_000, 3_600_000))
        b = body(publish_timestamp=old, event_timestamp=old - 5)
        return m.forged("forgery: stale replay", b, sign(b, m.secret))

    def future() -> Hostile:
        ahead = int(time.time() * 1000 + m.skew_ms + rng.randrange(1_000, 3_600_000))
        b = body(publish_timestamp=ahead)
        return m.forged("forgery: publish time in the future", b, sign(b, m.secret))

    def wrong_header() -> Hostile:
        b = body()
        return m.forged(
            "forgery: signature under another header",
            b,
            None,
            extra=[("x-momento-signature", sign(b, m.secret))],
        )

    return [
        missing,
        empty,
        random_hex,
        other_secret,
        other_body,
        tampered,
        sha256,
        truncated,
        stale,
        future,
        wrong_header,
    ]
