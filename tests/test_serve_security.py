"""selfmm.serve.security alone: the token middleware around a bare app, the security headers,
the same-origin rule, the Host rule's names and the checks of `selfmm serve`'s settings."""

from __future__ import annotations

import base64

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi import HTTPException  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from selfmm.errors import SelfMMError  # noqa: E402
from selfmm.serve import security  # noqa: E402
from selfmm.serve.security import (  # noqa: E402
    SECURITY_HEADERS,
    SecurityHeaders,
    TokenAuth,
    allowed_hosts,
    check_origin,
    check_token,
    is_loopback,
)
from serve_fakes import ScriptedRequest  # noqa: E402

TOKEN = "correct-horse-battery-staple"


def bare_app(*middleware: Middleware) -> TestClient:
    async def hello(request):
        return PlainTextResponse("hello")

    return TestClient(Starlette(routes=[Route("/health", hello), Route("/x", hello)], middleware=list(middleware)))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("header,allowed", [
    (None, False), (f"Bearer {TOKEN}", True), (f"bearer   {TOKEN}  ", True), (basic("anyone", TOKEN), True),
    (basic("", TOKEN), True), (basic(TOKEN, "x"), False), ("Bearer wrong", False), (f"Bearer {TOKEN}x", False),
    (f"Bearer {TOKEN[:-1]}", False), ("Basic !!", False), ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), False),
    (TOKEN, False), (f"Digest {TOKEN}", False),
])
def test_token_middleware(header, allowed):
    client = bare_app(Middleware(TokenAuth, token=TOKEN))
    headers = {} if header is None else {"authorization": header}
    response = client.get("/x", headers=headers)
    if allowed:
        assert response.status_code == 200 and response.text == "hello"
    else:
        assert response.status_code == 401 and response.json() == {
            "detail": "missing or wrong token: send Authorization: Bearer TOKEN"}
        assert response.headers["www-authenticate"] == 'Basic realm="selfmm", charset="UTF-8"'
    assert client.get("/health", headers=headers).status_code == 200  # always public


def test_token_comparison_is_over_digests(monkeypatch):
    """Constant time over equal lengths: what is compared is two SHA-256 digests, never the
    token itself."""
    compared = []
    real = security.hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    auth = TokenAuth(None, TOKEN)
    for given in ("short", TOKEN, TOKEN * 10):
        auth.allowed({"headers": [(b"authorization", f"Bearer {given}".encode())]})
    assert [(len(a), len(b)) for a, b in compared] == [(32, 32)] * 3
    assert all(TOKEN.encode() not in a + b for a, b in compared)


def test_security_headers_on_every_response():
    client = bare_app(Middleware(SecurityHeaders))
    for path in ("/x", "/missing"):
        response = client.get(path)
        for name, value in SECURITY_HEADERS:
            assert response.headers[name.decode()] == value.decode(), path


@pytest.mark.parametrize("origin,ok", [(None, True), ("http://testserver", True), ("http://evil.example", False),
                                       ("http://testserver.evil.example", False), ("null", False)])
def test_only_same_origin_posts(origin, ok):
    request = ScriptedRequest([], headers={"origin": origin}).request
    if ok:
        check_origin(request)
    else:
        with pytest.raises(HTTPException) as caught:
            check_origin(request)
        assert caught.value.status_code == 403 and caught.value.detail == f"cross-origin request from {origin} refused"


def test_host_names_and_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("127.8.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.org", "localhost.example.org"]))
    assert allowed_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.1"]
    assert "127.0.0.2" in allowed_hosts("127.0.0.2")
    assert allowed_hosts("0.0.0.0") is None  # any Host: the token is required there


def test_token_length():
    check_token(None)
    check_token("x" * security.MIN_TOKEN_LENGTH)
    with pytest.raises(SelfMMError, match="at least 16 characters"):
        check_token("x" * (security.MIN_TOKEN_LENGTH - 1))
