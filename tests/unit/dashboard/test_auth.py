"""The dashboard's login check and CSRF tokens (pure: no server)."""

from __future__ import annotations

import base64

from pipeline.dashboard.auth import BasicAuthMiddleware, Credentials


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


def test_no_answer_may_be_framed_by_another_site_with_or_without_a_login() -> None:
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def page(_: Request) -> PlainTextResponse:
        return PlainTextResponse("page")

    creds = Credentials("admin", "pw")
    app = Starlette(
        routes=[Route("/", page)],
        middleware=[Middleware(BasicAuthMiddleware, credentials=creds)],
    )

    async def answers() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
            return [await client.get("/"), await client.get("/", auth=("admin", "pw"))]

    refused, shown = asyncio.run(answers())
    assert (refused.status_code, shown.text) == (401, "page")
    for answer in (refused, shown):
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["content-security-policy"] == "frame-ancestors 'none'"


def test_topic_links_survive_names_that_mean_something_in_a_url() -> None:
    from starlette.routing import Route, Router

    from pipeline.dashboard.app import templates

    part = templates().env.filters["part"]
    router = Router(routes=[Route("/topics/{cache}/{topic:path}", lambda r: None, name="topic")])
    url = router.url_path_for("topic", cache=part("chat"), topic=part("room #1?a=b/c%"))
    assert url == "/topics/chat/room%20%231%3Fa%3Db%2Fc%25"
