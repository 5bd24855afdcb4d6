"""Momento webhook signatures: lowercase hex HMAC-SHA3-256 of the raw body. Pure, no I/O."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from pipeline.errors import BadSignature

SIGNATURE_HEADER = "momento-signature"


def sign(body: bytes, secret: str) -> str:
    """The ``momento-signature`` value Momento sends for ``body`` under ``secret``."""
    return hmac.new(secret.encode(), body, hashlib.sha3_256).hexdigest()


def verify_signature(body: bytes, header: str | None, secrets: Sequence[str]) -> None:
    """Raise BadSignature unless ``header`` is the signature of ``body`` under any secret.

    Every secret is tried (no early exit), each compared in constant time, so the timing says
    nothing about which secret, or which prefix, matched.
    """
    if not header:
        raise BadSignature(f"missing {SIGNATURE_HEADER} header")
    if not secrets:
        raise BadSignature("no webhook signing secret is configured (PIPELINE_WEBHOOK_SECRETS)")
    presented = header.strip().lower().encode()
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(sign(body, secret).encode(), presented)
    if not matched:
        raise BadSignature(f"{SIGNATURE_HEADER} matches no configured secret")
