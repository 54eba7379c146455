"""FastAPI integration for the embedded guard (optional: `pip install 'smsguard[fastapi]'`).

Nothing imports this module but an app that uses it (`from gateway import GuardMiddleware` never loads
FastAPI). It adds, on top of `GuardMiddleware`:

- `install(app, settings=...)`: the middleware, an exception handler answering refusals in SMSGate's
  `{"message": ...}` shape, the OpenAPI hook, and a start-up check that the app's declared scopes agree
  with the policy; returns the `Authorizer`.
- dependencies: `principal` (the caller, 401 when anonymous; with `Security(principal, scopes=[...])`
  the caller must hold every declared scope, else 403), `optional_principal` (None when anonymous, for
  public routes) and `decision` (the guard's `Decision`, None outside the mounts). They take an
  `HTTPConnection`, so they serve websocket routes as well.
- `check_scopes(app, authorizer)`: every way the app's routes and the YAML policy disagree (a route
  the policy has no rule for, scopes declared on a route that the rule does not require, a websocket
  route without a websocket rule); `install` refuses to start on any of them.
- `add_openapi_security(app, authorizer)`: the document FastAPI serves at /openapi.json gets the bearer
  security scheme, and each guarded operation its scopes from the policy (`security`, an `x-smsguard`
  extension and a line in its description), so /docs shows who may call what.

The policy stays the authority: the guard has refused a request before any dependency runs, so the
dependencies only add checks (declared scopes) and hand the app what the guard found.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, APIWebSocketRoute
from fastapi.security import SecurityScopes
from starlette.requests import HTTPConnection, Request

from gateway.auth.jwt import Principal
from gateway.config.settings import Settings
from gateway.errors import Forbidden, HTTPError, LoadError, Unauthorized
from gateway.guard.authorize import Authorizer, Decision, inside
from gateway.guard.middleware import GuardMiddleware
from gateway.policy.model import Rule
from gateway.policy.scopes import satisfies
from gateway.web.responses import error_body

__all__ = [
    "SCHEME",
    "GuardRefusal",
    "add_openapi_security",
    "check_scopes",
    "decision",
    "install",
    "optional_principal",
    "principal",
]

SCHEME = "smsguard"  # the name of the bearer security scheme in the OpenAPI document
_CONVERTOR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):[^}]*\}")


class GuardRefusal(HTTPException):
    """A dependency's refusal; `install` answers it like the guard does (`{"message": ...}`, RFC 6750)."""

    def __init__(self, error: HTTPError) -> None:
        super().__init__(error.status, error.message, error.headers or None)
        self.error = error


def decision(connection: HTTPConnection) -> Decision | None:
    """The guard's Decision for this request (None outside the mounts with `outside="pass"`)."""
    found: Decision | None = connection.scope.get("smsguard")
    return found


def optional_principal(connection: HTTPConnection) -> Principal | None:
    """The caller, or None for an anonymous caller (public routes, paths outside the mounts)."""
    found = decision(connection)
    return found.principal if found is not None else None


def principal(security_scopes: SecurityScopes, connection: HTTPConnection) -> Principal:
    """The caller (401 when anonymous); with `Security(principal, scopes=[...])` holding all of them (403)."""
    found = decision(connection)
    caller = found.principal if found is not None else None
    if caller is None:
        raise GuardRefusal(Unauthorized("authentication required"))
    declared = tuple(security_scopes.scopes)
    exact = found.rule.exact if found is not None else False
    if declared and not satisfies(caller.scopes, declared, "all", exact):
        required = " ".join(declared)
        raise GuardRefusal(Forbidden(f"insufficient scope: {required} required", required=required))
    return caller


async def _answer_refusal(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GuardRefusal)
    return JSONResponse(error_body(exc.error), exc.error.status, exc.error.headers)


def install(
    app: FastAPI,
    *,
    settings: Settings | None = None,
    authorizer: Authorizer | None = None,
    check: bool = True,
    **options: Any,
) -> Authorizer:
    """Guard `app` (GuardMiddleware with `options`, e.g. `outside="pass"`) and wire the FastAPI helpers.

    With `check` (default), start-up fails when `check_scopes` finds a disagreement with the policy.
    """
    if authorizer is None:
        if settings is None:
            raise TypeError("install needs settings= or authorizer=")
        authorizer = Authorizer.from_settings(settings)
    guard = authorizer

    def agree() -> None:
        problems = check_scopes(app, guard)
        if problems:
            raise LoadError("the app's routes disagree with the policy:\n  " + "\n  ".join(problems))

    app.add_middleware(GuardMiddleware, authorizer=authorizer, on_startup=agree if check else None, **options)
    app.add_exception_handler(GuardRefusal, _answer_refusal)
    add_openapi_security(app, authorizer)
    return authorizer


def _template(path: str) -> str:
    """FastAPI's path with convertors dropped (`/items/{id:int}` → `/items/{id}`): a policy template."""
    return _CONVERTOR.sub(r"{\1}", path)


def _declared(dependant: Any, inherited: Sequence[str] = ()) -> Iterator[tuple[str, ...]]:
    """The scopes each `principal` dependency in the tree receives (its own and its parents')."""
    own = getattr(dependant, "own_oauth_scopes", None) or getattr(dependant, "security_scopes", None) or []
    here = (*inherited, *(scope for scope in own if scope not in inherited))
    if dependant.call is principal:
        yield here
    for child in dependant.dependencies:
        yield from _declared(child, here)


def _routes(app: FastAPI) -> Iterator[tuple[str, str, bool, tuple[str, ...]]]:
    """(method, template, websocket, declared scopes) for every API and websocket route of `app`."""
    for route in app.routes:
        if isinstance(route, APIRoute):
            scopes = tuple(sorted({scope for found in _declared(route.dependant) for scope in found}))
            for method in sorted(route.methods or ()):
                yield method, _template(route.path), False, scopes
        elif isinstance(route, APIWebSocketRoute):
            scopes = tuple(sorted({scope for found in _declared(route.dependant) for scope in found}))
            yield "GET", _template(route.path), True, scopes


def check_scopes(app: FastAPI, authorizer: Authorizer) -> list[str]:
    """Every disagreement between the app's routes (and their declared scopes) and the policy."""
    problems: list[str] = []
    for method, path, websocket, declared in _routes(app):
        name = f"{'websocket' if websocket else method} {path}"
        if not any(inside(path, mount) for mount in authorizer.mounts):
            if declared:
                problems.append(f"{name} declares {' '.join(declared)} but lies outside the guarded mounts")
            continue
        match = authorizer.matcher.match(method, path)
        if match is None:
            problems.append(f"{name} has no policy rule: the guard refuses every call (404)")
            continue
        problem = _disagreement(match.rule, websocket, declared)
        if problem:
            problems.append(f"{name}: {problem} ({match.rule.label()})")
    return problems


def _disagreement(rule: Rule, websocket: bool, declared: tuple[str, ...]) -> str:
    if websocket and not rule.websocket:
        return "a websocket route, but its rule does not allow websockets (add `websocket: true`)"
    if not declared:
        return ""
    if rule.public:
        return f"declares {' '.join(declared)} on a public rule"
    if rule.mode == "any" and len(rule.scopes) > 1:
        return f"declares {' '.join(declared)}, but the rule accepts any one of {' '.join(rule.scopes)}"
    if set(declared) != set(rule.scopes):
        return f"declares {' '.join(declared)}, the policy requires {' '.join(rule.scopes)}"
    return ""


def add_openapi_security(app: FastAPI, authorizer: Authorizer) -> None:
    """Make `app.openapi()` list the bearer scheme and each guarded operation's scopes from the policy."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        describe_security(schema, authorizer)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def describe_security(schema: dict[str, Any], authorizer: Authorizer) -> None:
    """Add the bearer scheme and every operation's requirement, in place (OpenAPI 3.1 allows scopes there)."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "smsguard: a bearer token whose scopes the policy requires per operation",
    }
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if isinstance(operation, dict):
                _describe(operation, method.upper(), _template(path), authorizer)


def _describe(operation: dict[str, Any], method: str, path: str, authorizer: Authorizer) -> None:
    if not any(inside(path, mount) for mount in authorizer.mounts):
        return  # outside the mounts: not guarded (answered by the app with outside="pass", else refused)
    match = authorizer.matcher.match(method, path)
    if match is None:
        operation["x-smsguard"] = {"rule": None}
        _note(operation, "refused by the guard: no policy rule covers this operation")
        return
    rule = match.rule
    extension: dict[str, Any] = {"rule": rule.label(), "public": rule.public}
    if rule.public:
        operation["security"] = [{}, {SCHEME: []}]  # anyone; a token identifies the caller
        _note(operation, "public: no token needed")
    else:
        extension |= {"scopes": list(rule.scopes), "mode": rule.mode, "exact": rule.exact}
        if rule.mode == "any":
            operation["security"] = [{SCHEME: [scope]} for scope in rule.scopes]
        else:
            operation["security"] = [{SCHEME: list(rule.scopes)}]
        joined = (" or " if rule.mode == "any" else " and ").join(f"`{scope}`" for scope in rule.scopes)
        _note(operation, f"requires {joined}" + (" (granted by name: all:any does not do)" if rule.exact else ""))
    operation["x-smsguard"] = extension


def _note(operation: dict[str, Any], text: str) -> None:
    line = f"**smsguard**: {text}"
    description = operation.get("description")
    operation["description"] = f"{description}\n\n{line}" if description else line
