"""Hostile requests built byte by byte: bodies signed with the valid secret that try to break the
receiver (random JSON, deep nesting, huge numbers, wrong types, extreme timestamps, unicode,
oversize, broken framing and headers). The forgeries are in forgeries.py.

Each is sent on a connection of its own (``connection: close``; the receiver may drop a
connection after a request it cannot parse) and answered within ``timeout_s`` or counted as
unanswered. Accepted (2xx) bodies are returned so the caller can check that each was stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count

from benchmarks.ingest_bench import WEBHOOK_PATH, sign

HOSTILE_CACHE = "hostile-x"  # bodies that should be accepted go here; no route matches it


@dataclass(frozen=True)
class Hostile:
    """One request: what it tries, its bytes, whether it is a forgery, and its body."""

    kind: str
    request: bytes
    forged: bool
    body: bytes


class Maker:
    """Builds hostile requests from a seeded RNG; fresh timestamps at build time."""

    def __init__(self, secret: str, seed: int) -> None:
        self.secret = secret
        self.rng = random.Random(seed)
        self.seqs = count(1)
        # Honour the receiver's own settings if the caller passed them through the environment.
        self.window_ms = float(os.environ.get("PIPELINE_REPLAY_WINDOW_S", "60")) * 1000
        self.skew_ms = float(os.environ.get("PIPELINE_FUTURE_SKEW_S", "30")) * 1000

    # -- bodies ---------------------------------------------------------------------------------

    def event(self, **fields: object) -> dict[str, object]:
        """A valid Momento body (distinct sequence number), with ``fields`` put over it."""
        now = int(time.time() * 1000)
        body: dict[str, object] = {
            "cache": HOSTILE_CACHE,
            "topic": f"h-{self.rng.randrange(8)}",
            "event_timestamp": now - self.rng.randrange(0, 2000),
            "publish_timestamp": now,
            "topic_sequence_number": next(self.seqs),
            "token_id": "",
            "text": "hostile",
        }
        return body | fields

    def random_json(self, depth: int = 0) -> object:
        """A random JSON value (bounded depth and size)."""
        rng = self.rng
        pick = rng.randrange(9 if depth < 4 else 6)
        if pick == 0:
            return None
        if pick == 1:
            return rng.choice([True, False])
        if pick == 2:
            return rng.choice([0, -1, 2**31, 2**63, -(2**63) - 1, 10**20, rng.randrange(-999, 999)])
        if pick == 3:
            return rng.choice([0.5, -1e308, 1e-308, 3.14, 1e16])
        if pick in (4, 5):
            return self.text(rng.randrange(0, 40))
        if pick == 6:
            return [self.random_json(depth + 1) for _ in range(rng.randrange(4))]
        keys = [self.text(rng.randrange(0, 10)) for _ in range(rng.randrange(4))]
        return {k: self.random_json(depth + 1) for k in keys}

    def text(self, n: int) -> str:
        """Random text from awkward parts of Unicode (no lone surrogates: json.dumps escapes)."""
        pools = [
            "abc xyz 019",
            "éüßñ ÆØÅ",
            "\u202e\u200f\u200b\u2060\ufeff",  # bidi override, RLM, zero widths, BOM
            "e\u0301a\u0308\u0489",  # combining marks
            "😀🧪👩‍👩‍👧\U0010fffd\U0001f3f3\ufe0f",  # astral, ZWJ sequences, private use
            "\"\\/\b\f\n\r\t<>&'%",
            "中文日本語한국어العربية",
        ]
        return "".join(self.rng.choice(self.rng.choice(pools)) for _ in range(n))

    # -- requests -------------------------------------------------------------------------------

    def request(
        self,
        body: bytes,
        *,
        signature: str | None = "valid",
        content_type: str | None = "application/json",
        method: str = "POST",
        path: str = WEBHOOK_PATH,
        extra: list[tuple[str, str]] | None = None,
        length: int | None = None,
        chunked: bool = False,
    ) -> bytes:
        """The raw request; ``signature`` "valid" signs ``body`` with the secret."""
        head = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", "connection: close"]
        if content_type is not None:
            head.append(f"content-type: {content_type}")
        if signature is not None:
            value = sign(body, self.secret) if signature == "valid" else signature
            head.append(f"momento-signature: {value}")
        head += [f"{name}: {value}" for name, value in extra or []]
        if chunked:
            head.append("transfer-encoding: chunked")
            size = 8192
            parts = [body[i : i + size] for i in range(0, len(body), size)]
            payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        else:
            head.append(f"content-length: {len(body) if length is None else length}")
            payload = body
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload

    def signed(self, kind: str, body: bytes | str, **options: object) -> Hostile:
        """A request signed with the valid secret (it may be refused, never answered 5xx)."""
        raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        return Hostile(kind, self.request(raw, **options), False, raw)  # type: ignore[arg-type]

    def forged(self, kind: str, body: bytes, signature: str | None, **options: object) -> Hostile:
        """A request that must be refused, whatever its body."""
        request = self.request(body, signature=signature, **options)  # type: ignore[arg-type]
        return Hostile(kind, request, True, body)


def dumps(value: object) -> str:
    """JSON with non-ASCII characters kept as they are."""
    return json.dumps(value, ensure_ascii=False)


def _nested(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "array" else ('{"a":' * depth + "1" + "}" * depth)


WRONG = [
    "1",
    1.5,
    True,
    None,
    -1,
    2**63,
    2**64,
    -(2**63),
    [],
    {},
    "",
    "x" * 256,
    "a\x00b",
    1e308,
]


def hostile_generators(m: Maker) -> list[Callable[[], Hostile]]:
    """Signed requests that try to break parsing, validation and storing."""
    rng = m.rng
    fields = [
        "cache",
        "topic",
        "event_timestamp",
        "publish_timestamp",
        "topic_sequence_number",
        "token_id",
        "text",
    ]
    now = lambda: int(time.time() * 1000)  # noqa: E731

    def wrong_type() -> Hostile:
        return m.signed("wrong type", dumps(m.event(**{rng.choice(fields): rng.choice(WRONG)})))

    def missing_field() -> Hostile:
        body = m.event()
        del body[rng.choice(fields)]
        return m.signed("missing field", dumps(body))

    def random_json() -> Hostile:
        return m.signed("random JSON", dumps(m.random_json()))

    def extra_fields() -> Hostile:
        junk = {m.text(rng.randrange(1, 8)): m.random_json() for _ in range(rng.randrange(1, 6))}
        return m.signed("extra fields", dumps(m.event() | junk))

    def deep_nesting() -> Hostile:
        depth = rng.choice([20, 33, 100, 1000, 5000, 20_000])
        nest = _nested(depth, rng.choice(["array", "object"]))
        if rng.random() < 0.3:
            return m.signed(f"deep nesting (top level, {depth})", nest)
        body = dumps(m.event())[:-1] + f', "nest": {nest}}}'
        return m.signed(f"deep nesting ({depth})", body)

    def huge_number() -> Hostile:
        value = rng.choice(
            [
                "9" * 5000,
                "1" + "0" * 4400,
                "1e999",
                "-1e999",
                "1e400",
                "18446744073709551616",
                "9223372036854775808",
                "-9223372036854775809",
                "1.0",
                "-0",
                "0.0000001",
            ]
        )
        field = rng.choice(["topic_sequence_number", "event_timestamp", "publish_timestamp"])
        body = dumps({k: v for k, v in m.event().items() if k != field})
        return m.signed(f"huge number in {field}", body[:-1] + f', "{field}": {value}}}')

    def extreme_timestamp() -> Hostile:
        n = now()
        field, value = rng.choice(
            [
                ("event_timestamp", v)
                for v in (
                    0,
                    1,
                    2**63 - 1,
                    n * 1000,
                    n // 1000,
                    n + 10**7,
                    n - 400 * 86_400_000,
                    4_102_444_800_000,
                )
            ]
            + [("publish_timestamp", v) for v in (0, 2**63 - 1, n * 1000, n // 1000)]
        )
        return m.signed(f"extreme {field}", dumps(m.event(**{field: value})))

    def unicode_fields() -> Hostile:
        field = rng.choice(["cache", "topic", "token_id", "text"])
        value = rng.choice(
            [
                m.text(rng.randrange(1, 60)),
                "😀" * 255,
                "😀" * 256,
                "\ufeff",
                "\u0000",
                "\ud800",
                "\udfff x",
                "a" * 255,
                "\u202e" + "gnp.exe",
                " ",
                "\n",
            ]
        )
        body = json.dumps(m.event(**{field: value}), ensure_ascii=rng.random() < 0.5)
        return m.signed(f"unicode in {field}", body)

    def bad_bytes() -> Hostile:
        good = dumps(m.event()).encode()
        body = rng.choice(
            [
                good[: len(good) // 2],
                good + b"garbage",
                b"\xef\xbb\xbf" + good,
                b"",
                b"   ",
                good.replace(b'"text": "hostile"', b'"text": "\xff\xfe"'),
                good.replace(b'"text": "hostile"', b'"text": "\xc0\xaf"'),  # overlong encoding
                good.replace(b'"text": "hostile"', b'"text": "\xed\xa0\x80"'),  # raw surrogate
                good.replace(b"{", b'{"topic": 7, ', 1),  # duplicate key (the last one wins)
                good.replace(b'"hostile"', b"NaN"),
                good.replace(b'"hostile"', b"Infinity"),
                good[:-1] + b", /* comment */}",
                good.replace(b'"', b"'"),
                b"\x00" * 64,
            ]
        )
        return m.signed("malformed bytes", body)

    def oversize() -> Hostile:
        pad = "x" * rng.choice([65_000, 65_536, 70_000, 200_000])
        body = dumps(m.event(text=pad)).encode()
        how = rng.choice(["plain", "chunked", "lying length"])
        if how == "chunked":
            return m.signed("oversize (chunked)", body, chunked=True)
        if how == "lying length":
            return m.signed("oversize (declared)", body[:100], length=10_000_000)
        return m.signed(f"oversize ({len(body)} B)", body)

    def odd_headers() -> Hostile:
        body = dumps(m.event()).encode()
        variant = rng.randrange(8)
        if variant == 0:
            ct = rng.choice(["text/plain", "application/x-www-form-urlencoded", "", "json"])
            return m.signed("content type", body, content_type=ct)
        if variant == 1:
            return m.signed("no content type", body, content_type=None)
        if variant == 2:
            return m.signed("long header", body, extra=[("x-pad", "y" * 70_000)])
        if variant == 3:
            return m.signed("many headers", body, extra=[(f"x-h{i}", "v") for i in range(500)])
        if variant == 4:
            return m.signed("method", body, method=rng.choice(["GET", "PUT", "DELETE", "PATCH"]))
        if variant == 5:
            path = rng.choice(
                [
                    WEBHOOK_PATH + "/",
                    "/webhooks/momento?x=1",
                    "//webhooks/momento",
                    "/webhooks/%6domento",
                    "/" + "a" * 5000,
                ]
            )
            return m.signed("path", body, path=path)
        if variant == 6:
            return m.signed("uppercase signature", body, signature=sign(body, m.secret).upper())
        return m.signed("length shorter than body", body, length=len(body) - 10)

    return [
        wrong_type,
        missing_field,
        random_json,
        extra_fields,
        deep_nesting,
        huge_number,
        extreme_timestamp,
        unicode_fields,
        bad_bytes,
        oversize,
        odd_headers,
    ]


async def _post(port: int, request: bytes, timeout_s: float) -> int:
    """Send one raw request on a new connection; the status, or 0 if none came."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout_s
        )
    except (OSError, TimeoutError):
        return 0
    try:
        writer.write(request)
        line = await asyncio.wait_for(reader.readline(), timeout_s)
        return int(line.split(b" ", 2)[1]) if line.startswith(b"HTTP/1.") else 0
    except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError):
        return 0
    finally:
        writer.close()


def send_raw(
    port: int, requests: list[Hostile], concurrency: int = 16, timeout_s: float = 10.0
) -> list[int]:
    """Send each request once, ``concurrency`` at a time; statuses in the same order."""
    statuses = [0] * len(requests)

    async def main() -> None:
        todo = iter(range(len(requests)))

        async def lane() -> None:
            for i in todo:
                statuses[i] = await _post(port, requests[i].request, timeout_s)

        await asyncio.gather(*(lane() for _ in range(concurrency)))

    asyncio.run(main())
    return statuses
