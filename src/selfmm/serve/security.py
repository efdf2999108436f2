"""Who may ask: the token, the Host rule, same-origin form posts, and the headers that keep the
page to its own assets. docs/security.md says what each one stops."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import SelfMMError
from .schemas import problem

MIN_TOKEN_LENGTH = 16
LOOPBACK_NAMES = ("localhost",)
PUBLIC_PATHS = ("/health",)
SECURITY_HEADERS = [
    # Every asset comes from this server; nothing may be framed or fetched from elsewhere.
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
     b"form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str) -> list[str] | None:
    """The Host headers a server bound to `host` answers: on loopback only names of this
    machine (against DNS rebinding); elsewhere any (the token guards it)."""
    return ["127.0.0.1", "localhost", "::1", "[::1]", host] if is_loopback(host) else None


def check_token(token: str | None) -> None:
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise SelfMMError(f"the token must be at least {MIN_TOKEN_LENGTH} characters; make one "
                          "with: python -c 'import secrets; print(secrets.token_urlsafe(24))'")


def check_origin(request: Request) -> None:
    """Browsers let any web page post a form cross-origin; only ours may (403)."""
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        raise problem(403, f"cross-origin request from {origin} refused")


def _credential(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or the password of a Basic one
    (what a browser sends after its login prompt; the user name is ignored)."""
    for key, value in scope["headers"]:
        if key == b"authorization":
            scheme, _, rest = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return rest.strip()
            if scheme.lower() == "basic":
                try:
                    return base64.b64decode(rest.strip(), validate=True).decode().partition(":")[2]
                except (ValueError, UnicodeDecodeError):
                    return None
    return None


class TokenAuth:
    """Every path but /health needs the token. Both sides are hashed first, so that the
    constant-time comparison runs over equal lengths and leaks not even the token's length."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.digest = hashlib.sha256(token.encode()).digest()

    def allowed(self, scope: Scope) -> bool:
        given = _credential(scope)
        return given is not None and hmac.compare_digest(
            hashlib.sha256(given.encode()).digest(), self.digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"detail": "missing or wrong token: send Authorization: Bearer TOKEN"}, 401,
            headers={"WWW-Authenticate": 'Basic realm="selfmm", charset="UTF-8"'})
        await response(scope, receive, send)


class SecurityHeaders:
    """SECURITY_HEADERS on every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)
