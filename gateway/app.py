"""`create_app(settings)`: the reverse-proxy gateway as one ASGI app that owns its clients and stores.

    request ─┬─ /healthz, /readyz, /.well-known/jwks.json     answered here
             ├─ {tokens.mount}/auth/token...                   TokenEndpoints
             └─ everything else ── GuardMiddleware ── ProxyApp ── upstream (credentials injected)

Nothing is global: the store, the HTTP pools and the JWKS client are created by `create_app` and opened
and closed by the ASGI lifespan, so two apps in one process never share state.
"""

from __future__ import annotations

from collections.abc import Sequence

from .asgi import Receive, Scope, Send
from .authorize import Authorizer
from .config import Settings
from .credentials import build_credentials
from .errors import HTTPError, LoadError
from .issue import TokenIssuer
from .middleware import GuardMiddleware
from .paths import canonical_path
from .policy import Policy, load_policies
from .proxy import ProxyApp
from .responses import send_error, send_json
from .stores import Store, open_store
from .tokens import TokenService
from .tokens_api import TokenEndpoints

__all__ = ["Gateway", "check_policies_against_upstreams", "create_app"]


def check_policies_against_upstreams(settings: Settings, policies: Sequence[Policy]) -> None:
    """In proxy mode every policy must name a configured upstream, else it would have nowhere to forward."""
    for policy in policies:
        if policy.upstream is None:
            raise LoadError(
                "a policy served by the proxy must name its upstream", file=policy.file, line=1, key="upstream"
            )
        if policy.upstream not in settings.upstreams:
            known = ", ".join(sorted(settings.upstreams)) or "none"
            raise LoadError(
                f"upstream {policy.upstream!r} is not configured in {settings.file} (configured: {known})",
                file=policy.file,
                line=1,
                key="upstream",
            )


class Gateway:
    """The ASGI application behind `gateway serve`."""

    def __init__(self, settings: Settings, *, store: Store | None = None) -> None:
        self.settings = settings
        self.policies = load_policies(settings.policies)
        check_policies_against_upstreams(settings, self.policies)
        self.store = store or open_store(settings.store)
        vocabulary = {scope for policy in self.policies for scope in policy.scopes}
        self.tokens = TokenService(settings.tokens, self.store, vocabulary)
        self.authorizer = Authorizer.from_settings(settings, policies=self.policies, is_revoked=self.tokens.is_revoked)
        credentials = {name: build_credentials(up.credentials) for name, up in settings.upstreams.items()}
        self.proxy = ProxyApp(settings.upstreams, settings.proxy, credentials)
        self.guarded = GuardMiddleware(self.proxy, authorizer=self.authorizer)
        self.token_endpoints = TokenEndpoints(settings.tokens.mount, self.tokens, self.authorizer.authenticator)
        issuer = self.tokens.issuer
        self.jwks = issuer.jwks() if isinstance(issuer, TokenIssuer) else {"keys": []}
        self.started = False

    async def startup(self) -> None:
        await self.proxy.start()
        self.started = True

    async def shutdown(self) -> None:
        self.started = False
        await self.proxy.aclose()
        await self.authorizer.aclose()
        await self.store.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/healthz":
            await send_json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            await self._ready(send)
        elif path == "/.well-known/jwks.json" and self.jwks["keys"]:
            await send_json(send, 200, self.jwks, {"cache-control": "public, max-age=300"})
        elif self.token_endpoints.handles(path):
            try:
                canonical = canonical_path(scope.get("raw_path") or path.encode())
            except HTTPError as exc:
                await send_error(send, exc)
                return
            await self.token_endpoints(scope, receive, send, canonical)
        else:
            await self.guarded(scope, receive, send)

    async def _ready(self, send: Send) -> None:
        checks = {"config": True, "upstreams": self.started and self.proxy.ready(), "store": await self.store.ping()}
        ready = all(checks.values())
        await send_json(send, 200 if ready else 503, {"status": "ready" if ready else "not ready", "checks": checks})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # report to the server, which then exits
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings, *, store: Store | None = None) -> Gateway:
    """Build the gateway for `settings`; raises LoadError when the policies or config do not fit together."""
    return Gateway(settings, store=store)
