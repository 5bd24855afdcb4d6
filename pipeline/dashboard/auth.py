"""Who may see the dashboard and who may change things: basic auth and CSRF tokens.

The dashboard shares Flower's login (FLOWER_USER / FLOWER_PASSWORD, or the password generated
once under PIPELINE_HOME), and that login is the admin: there is no anonymous access. A
state-changing request must be a POST carrying the CSRF token rendered into the page's form, an
HMAC of the user under a key that lives only in this process, so another site cannot forge it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REALM = 'Basic realm="momento-pipeline dashboard", charset="UTF-8"'
FRAMING: list[tuple[bytes, bytes]] = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
]
"""On every answer: no other site may frame a page (a framed replay form is two clicks)."""


@dataclass(frozen=True)
class Credentials:
    """The admin login, and the key CSRF tokens are signed with."""

    user: str
    password: str
    csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def check(self, authorization: str | None) -> str | None:
        """The user named by a valid ``Authorization: Basic`` header, else None."""
        if not authorization or not authorization.lower().startswith("basic "):
            return None
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        ok_password = hmac.compare_digest(password.encode(), self.password.encode())
        return user if sep and ok_user and ok_password else None

    def csrf_token(self, user: str) -> str:
        """The token a form of ``user`` carries."""
        return hmac.new(self.csrf_key, f"csrf:{user}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, user: str, token: str | None) -> bool:
        """Whether ``token`` is ``user``'s CSRF token."""
        return token is not None and hmac.compare_digest(token, self.csrf_token(user))


class BasicAuthMiddleware:
    """401 with a challenge unless the request carries the admin login; the user goes to
    ``scope["user_name"]`` for the pages."""

    def __init__(self, app: ASGIApp, credentials: Credentials) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        send = _framing_headers(send)
        user = self.credentials.check(Headers(scope=scope).get("authorization"))
        if user is None:
            response = PlainTextResponse(
                "login required", status_code=401, headers={"WWW-Authenticate": REALM}
            )
            await response(scope, receive, send)
            return
        scope["user_name"] = user
        await self.app(scope, receive, send)


def _framing_headers(send: Send) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *FRAMING]
        await send(message)

    return send_with_headers
