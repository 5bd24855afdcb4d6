"""Schemathesis against the receiver's OpenAPI document, as the receiver serves it.

Cases come from schemathesis's Hypothesis strategies for every operation, positive (what the
document allows) and negative (what it forbids). A webhook case is sent as generated (its
``momento-signature`` is random, so it is a forgery that must be refused), signed with the valid
secret, and, for a positive object body, also signed with ``publish_timestamp`` set to now (so it
reaches the broker and must be stored). Each answer goes through schemathesis's response checks
(no server error, documented status, content type, headers and body schema).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from benchmarks.ingest_bench import WEBHOOK_PATH, sign

SIGNATURE = "momento-signature"


@dataclass
class FuzzResult:
    """What the schemathesis part saw."""

    statuses: list[tuple[str, int]] = field(default_factory=list)  # (kind, status)
    forged: list[int] = field(default_factory=list)  # statuses of requests that were forgeries
    accepted_bodies: list[bytes] = field(default_factory=list)
    check_failures: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    unsendable: int = 0


def run_schemathesis(port: int, secret: str, requests: int, seed: int) -> FuzzResult:
    """About ``requests`` requests generated from the served OpenAPI document."""
    import httpx
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    base = f"http://127.0.0.1:{port}"
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    result = FuzzResult()
    budget = {"positive": requests // 2 // 3, "negative": (requests - requests // 2) // 2}
    with httpx.Client(base_url=base, timeout=10) as client:
        fuzzer = _Fuzzer(client, secret, result)
        for operation in (r.ok() for r in schema.get_all_operations()):
            webhook = operation.path == WEBHOOK_PATH
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                n = max(1, budget[mode.value]) if webhook else 5
                try:
                    fuzzer.test(operation, mode, n, seed, webhook)()
                except Unsatisfiable:
                    if webhook:  # a GET without parameters has nothing to make invalid
                        result.examples.append(f"{operation.label} {mode.value}: unsatisfiable")
                except Exception as exc:
                    stopped = f"{operation.label} {mode.value}: stopped: {exc!r}"
                    result.examples.append(stopped[:300])
    return result


class _Fuzzer:
    """Sends generated cases and their signed variants; records answers and check failures."""

    def __init__(self, client: Any, secret: str, result: FuzzResult) -> None:
        from schemathesis.checks import not_a_server_error
        from schemathesis.specs.openapi.checks import (
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
            status_code_conformance,
        )

        self.client = client
        self.secret = secret
        self.result = result
        self.checks = [
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ]

    def test(self, operation: Any, mode: Any, n: int, seed: int, webhook: bool) -> Any:
        """A Hypothesis test that sends ``n`` cases of ``operation`` in ``mode``."""
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as hypothesis_seed

        @hypothesis_seed(seed)
        @settings(
            max_examples=n,
            phases=[Phase.generate],
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: Any) -> None:
            self.one_case(case, mode.value, webhook)

        return fuzz

    def one_case(self, case: Any, mode: str, webhook: bool) -> None:
        """The case as generated; for the webhook also signed, and signed with fresh times."""
        kind = f"schemathesis {mode} {case.method.upper()} {case.path}"
        body, headers = _serialize(case)
        self.send(case, f"{kind}:as generated", body, headers)
        if not webhook or body is None:
            return
        headers = {k: v for k, v in headers.items() if k.lower() != SIGNATURE}
        self.send(case, f"{kind}:signed", body, headers | {SIGNATURE: sign(body, self.secret)})
        if mode == "positive" and isinstance(case.body, dict):
            now = int(time.time() * 1000)
            fresh = json.dumps(case.body | {"publish_timestamp": now, "event_timestamp": now - 1})
            raw = fresh.encode()
            signed = headers | {SIGNATURE: sign(raw, self.secret)}
            self.send(case, f"{kind}:signed fresh", raw, signed)

    def send(self, case: Any, kind: str, body: bytes | None, headers: dict[str, str]) -> None:
        """One request; its answer through schemathesis's response checks."""
        import httpx

        result = self.result
        try:
            response = self.client.request(
                case.method,
                case.formatted_path,
                content=body,
                headers=headers,
                params=case.query or None,
            )
        except (httpx.HTTPError, UnicodeError, TypeError, ValueError):
            result.unsendable += 1
            return
        result.statuses.append((kind, response.status_code))
        if case.method.upper() == "POST" and kind.endswith(":as generated"):
            result.forged.append(response.status_code)
        elif 200 <= response.status_code < 300 and body is not None:
            result.accepted_bodies.append(body)
        try:
            case.validate_response(response, checks=self.checks)
        except Exception as exc:
            for failure in getattr(exc, "exceptions", [exc]):
                title = getattr(failure, "title", type(failure).__name__)
                result.check_failures[title] += 1
                if len(result.examples) < 5:
                    result.examples.append(f"{kind} -> {response.status_code}: {title}")


def _serialize(case: Any) -> tuple[bytes | None, dict[str, str]]:
    """The body bytes and headers of a case, as the receiver will see them."""
    headers = {str(k): str(v) for k, v in (case.headers or {}).items()}
    body = None
    with contextlib.suppress(Exception):
        from schemathesis.core import NOT_SET

        if case.body is not NOT_SET:
            body = json.dumps(case.body).encode()
    if body is not None and not any(k.lower() == "content-type" for k in headers):
        headers["content-type"] = case.media_type or "application/json"
    return body, headers
