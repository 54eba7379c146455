"""The studio's web app: one page and a small JSON API, behind a one-time secret.

    GET  /?token=SECRET   the page (HTML, its script and style inlined, allowed by hash in the CSP)
    GET  /api/files       the files: id, name, text, version (SHA-256 of the bytes on disk)
    POST /api/validate    {"texts": {id: text}} → findings by file and line, the CLI's text, the matrix
    POST /api/simulate    {"texts", "method", "path", "scopes": [...] | "token": JWT} → allow or deny, and why
    POST /api/review      {"texts"} → the access diff against the disk, the policy tests' results
    POST /api/save        {"file": id, "text", "base": version} → written, 409 on a conflict, 422 if invalid

Every request must carry the secret: the page in its URL's `token` parameter (the URL the studio
prints), the API in the `X-Studio-Token` header, which the page's script sets and a cross-site form or
image never can (no cookie is ever set). A missing or wrong secret is 401, a request whose `Origin` or
`Sec-Fetch-Site` says another site is 403, a `Host` that is not a loopback name (DNS rebinding) is 403,
a body over `MAX_BODY_BYTES` is 413. Texts the API takes are not trusted: any id other than the files'
is 404, anything not a string is 400, and a text that fails to load is a finding, never an error page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import LoadError
from gateway.studio.workspace import MAX_TEXT_CHARS, StudioError, Workspace

__all__ = ["MAX_BODY_BYTES", "TOKEN_HEADER", "Page", "create_studio_app"]

TOKEN_HEADER = "x-studio-token"
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_TOKEN_CHARS = 16 * 1024
MAX_TARGET_CHARS = 8 * 1024
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})

Json = dict[str, Any]


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


class Page:
    """index.html with studio.js and studio.css inlined, and the CSP that allows exactly those two."""

    def __init__(self) -> None:
        static = files("gateway.studio").joinpath("static")
        script = static.joinpath("studio.js").read_text(encoding="utf-8")
        style = static.joinpath("studio.css").read_text(encoding="utf-8")
        template = static.joinpath("index.html").read_text(encoding="utf-8")
        self.html = template.replace("/*STYLE*/", style).replace("/*SCRIPT*/", script)
        self.csp = (
            f"default-src 'none'; script-src {_sha256(script)}; style-src {_sha256(style)}; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )


def _headers(csp: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", csp.encode("ascii")),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"cache-control", b"no-store"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cross-origin-resource-policy", b"same-origin"),
    ]


class SecretGuard:
    """Pure ASGI: loopback Host, same-site requests and the secret, before anything answers; security headers."""

    def __init__(self, app: ASGIApp, secret: str, csp: str, hosts: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.secret = secret.encode("utf-8")
        self.headers = _headers(csp)
        self.hosts = {name.strip("[]").lower() for name in LOOPBACK_NAMES | hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
            return  # websockets: nothing here speaks them

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            status, text = refusal
            await JSONResponse({"message": text}, status_code=status)(scope, receive, secured)
            return
        await self.app(scope, receive, secured)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.lower(), value)
        host = headers.get(b"host", b"").decode("latin-1")
        if _hostname(host) not in self.hosts:
            return 403, "the studio answers only to a loopback host name (127.0.0.1 or localhost)"
        page = scope["path"] == "/" and scope["method"] in ("GET", "HEAD")
        if _cross_site(headers, host, page):
            return 403, "cross-site request refused"
        given = headers.get(TOKEN_HEADER.encode("ascii"))
        if given is None and page:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            given = query["token"].encode("latin-1", "replace") if "token" in query else None
        if given is None:
            return 401, "the studio needs its secret: open the URL it printed"
        if not hmac.compare_digest(given, self.secret):
            return 401, "wrong secret: open the URL the studio printed"
        return None


def _cross_site(headers: Mapping[bytes, bytes], host: str, page: bool) -> bool:
    """A request another site made: its Origin names another host, or Sec-Fetch-Site says so.

    Opening the page is a navigation any site may start (a link clicked in a web terminal): what it
    needs is the secret in the URL, and the page cannot be framed. Everything else must be same-origin.
    """
    if page and headers.get(b"sec-fetch-mode") == b"navigate":
        return False
    origin = headers.get(b"origin")
    if origin is not None and _netloc(origin.decode("latin-1")) != host:
        return True
    return headers.get(b"sec-fetch-site", b"same-origin") not in (b"same-origin", b"none")


def _netloc(url: str) -> str | None:
    try:
        return urlsplit(url).netloc
    except ValueError:
        return None


def _hostname(host: str) -> str | None:
    try:
        return urlsplit(f"//{host}").hostname
    except ValueError:
        return None


async def _body(request: Request) -> Json:
    """The request's JSON object, read up to MAX_BODY_BYTES (413 beyond, 400 if not a JSON object)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise StudioError(415, "send JSON (Content-Type: application/json)")
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit():
        raise StudioError(400, "bad Content-Length")
    if int(declared) > MAX_BODY_BYTES:
        raise StudioError(413, f"request too large (at most {MAX_BODY_BYTES} bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise StudioError(413, f"request too large (at most {MAX_BODY_BYTES} bytes)")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise StudioError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise StudioError(400, "the body must be a JSON object")
    return data


def _string(data: Json, key: str, limit: int, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise StudioError(400, f"{key}: expected a string")
    if len(value) > limit:
        raise StudioError(413, f"{key}: too long (at most {limit} characters)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise StudioError(400, f"{key}: not valid text (lone surrogates)") from None
    return value


def _texts(workspace: Workspace, data: Json) -> dict[str, str]:
    """Every file's text: `texts` ({id: text}) over the files on disk."""
    given = data.get("texts", {})
    if not isinstance(given, dict):
        raise StudioError(400, "texts: expected an object {file id: text}")
    edits: dict[str, str] = {}
    for key in given:
        workspace.file(key)
        text = _string(given, key, MAX_TEXT_CHARS)
        assert text is not None
        edits[key] = text
    return workspace.texts(edits)


def _scopes(data: Json) -> list[str] | None:
    value = data.get("scopes")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(s, str) and len(s) <= 200 for s in value) or len(value) > 500:
        raise StudioError(400, "scopes: expected a list of scope names")
    return value


def _load_error(exc: LoadError) -> StudioError:
    return StudioError(422, f"the edited policy does not load: {exc.line_text}")


Endpoint = Callable[[Workspace, Request], Awaitable[Json]]


def _api(workspace: Workspace, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        try:
            return JSONResponse(await endpoint(workspace, request))
        except LoadError as exc:
            error = _load_error(exc)
            return JSONResponse({"message": error.message}, status_code=error.status)
        except StudioError as exc:
            return JSONResponse({"message": exc.message, **exc.extra}, status_code=exc.status)

    return handle


async def _files(workspace: Workspace, request: Request) -> Json:
    return {
        "files": await run_in_threadpool(workspace.documents),
        "config": workspace.config,
        "tokens": workspace.settings is not None,
    }


def _validated(workspace: Workspace, texts: Mapping[str, str]) -> Json:
    report = workspace.validate(texts)
    try:
        policies, _ = workspace.compile(texts)
    except LoadError:
        return {**report, "matrix": None}
    return {**report, "matrix": workspace.matrix(policies)}


async def _validate(workspace: Workspace, request: Request) -> Json:
    texts = _texts(workspace, await _body(request))
    return await run_in_threadpool(_validated, workspace, texts)


async def _simulate(workspace: Workspace, request: Request) -> Json:
    data = await _body(request)
    texts = _texts(workspace, data)
    method = _string(data, "method", 32)
    target = _string(data, "path", MAX_TARGET_CHARS)
    token = _string(data, "token", MAX_TOKEN_CHARS, required=False)
    assert method is not None
    assert target is not None
    return await workspace.simulate(texts, method, target, scopes=_scopes(data), token=token or None)


async def _review(workspace: Workspace, request: Request) -> Json:
    return await workspace.review(_texts(workspace, await _body(request)))


async def _save(workspace: Workspace, request: Request) -> Json:
    data = await _body(request)
    file = workspace.file(data.get("file"))
    text = _string(data, "text", MAX_TEXT_CHARS)
    base = _string(data, "base", 64)
    assert text is not None
    assert base is not None
    return await run_in_threadpool(workspace.save, file, text, base)


def create_studio_app(workspace: Workspace, secret: str, *, host: str = "127.0.0.1") -> ASGIApp:
    """The studio for `workspace`, answering only requests that carry `secret` (and name `host` or loopback)."""
    page = Page()

    async def index(request: Request) -> Response:
        return HTMLResponse(page.html)

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/api/files", _api(workspace, _files), methods=["GET"]),
        Route("/api/validate", _api(workspace, _validate), methods=["POST"]),
        Route("/api/simulate", _api(workspace, _simulate), methods=["POST"]),
        Route("/api/review", _api(workspace, _review), methods=["POST"]),
        Route("/api/save", _api(workspace, _save), methods=["POST"]),
    ]
    return SecretGuard(Starlette(routes=routes), secret, page.csp, frozenset({host}))
