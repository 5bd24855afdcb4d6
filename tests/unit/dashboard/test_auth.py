"""The dashboard's login check and CSRF tokens (pure: no server)."""

from __future__ import annotations

import base64

from pipeline.dashboard.auth import Credentials


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_only_the_exact_login_passes() -> None:
    creds = Credentials("admin", "s3cret:with-colon")
    assert creds.check(basic("admin", "s3cret:with-colon")) == "admin"
    assert creds.check(basic("admin", "s3cret")) is None
    assert creds.check(basic("root", "s3cret:with-colon")) is None
    assert creds.check(None) is None
    assert creds.check("Bearer abc") is None
    assert creds.check("Basic !!!not-base64") is None
    assert creds.check("Basic " + base64.b64encode(b"no-colon").decode()) is None


def test_csrf_tokens_belong_to_one_user_and_one_process() -> None:
    creds = Credentials("admin", "pw")
    token = creds.csrf_token("admin")
    assert creds.csrf_ok("admin", token)
    assert not creds.csrf_ok("other", token)
    assert not creds.csrf_ok("admin", None)
    assert not creds.csrf_ok("admin", token[:-1] + ("0" if token[-1] != "0" else "1"))
    assert not Credentials("admin", "pw").csrf_ok("admin", token)  # a restart changes the key
