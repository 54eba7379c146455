"""`create_app(settings)`: the reverse-proxy gateway as one ASGI app that owns its clients and stores.

    request ── Observer ─┬─ /healthz, /readyz, /.well-known/jwks.json, /admin/policy, /metrics   answered here
                         ├─ {tokens.mount}/auth/token...                     TokenEndpoints
                         └─ everything else ── GuardMiddleware ── ProxyApp ── upstream (credentials injected)

With a `cors:` section, `guard/cors.py` sits between the Observer and this dispatch: it answers CORS
preflights itself (route `OPTIONS cors-preflight`) and adds the CORS headers to every other answer.

Everything derived from one version of config.yaml and the policies lives in a `Runtime`. Hot reload
(file change or SIGHUP) builds and validates a whole new Runtime and swaps it in with one assignment;
a request keeps the Runtime it started with, and a replaced Runtime's pools close once its last request
has finished. An invalid edit changes nothing: the last good version keeps serving and the error is
reported in /readyz and /admin/policy. Nothing is global: two apps in one process share no state.

The Gateway owns its observability: `Loggers` (structlog, one redacting chain that knows this app's
secrets; events go to stdlib logging `smsguard.*` unless a `log_sink` is given, e.g. the CLI's
`StreamSink`), `Metrics` (its own Prometheus registry, served at `metrics.path`) and the `Observer`
that gives every request an id, one access event and its metrics (`observe.py`). Audit events:
`policy.loaded`, `policy.reload_rejected` here; `token.*` in tokens.py; `upstream.*` in exchange.py
and proxy.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.auth.jwt import Principal
from gateway.config.settings import Settings, load_settings
from gateway.errors import Forbidden, HTTPError, LoadError, NotFound, Unauthorized
from gateway.guard.authorize import Authorizer
from gateway.guard.cors import Cors
from gateway.guard.middleware import GuardMiddleware
from gateway.keys.endpoints import KeyEndpoints
from gateway.keys.errors import ProviderErrors
from gateway.keys.service import KeyService
from gateway.keys.slots import KeySlots, slot_styles
from gateway.limits import LimitsApp
from gateway.observe.events import (
    RECORD_KEY,
    ObservePlan,
    Observer,
    RequestRecord,
    note_principal,
    route_label,
)
from gateway.observe.logs import Loggers, LogSink, Redactor
from gateway.observe.metrics import Metrics
from gateway.observe.tracing import OFF, Tracer, build_tracer
from gateway.policy.loader import load_policies
from gateway.policy.model import Policy, display_path, rule_label
from gateway.policy.paths import canonical_path
from gateway.policy.scopes import SUPERUSER, satisfies
from gateway.proxy.credentials import build_credentials
from gateway.proxy.forward import ProxyApp
from gateway.proxy.modes import KeyedProxy
from gateway.proxy.reach import Reachability
from gateway.store import MemoryStore, Store, StoreGuard, open_store
from gateway.tokens.endpoints import TokenEndpoints
from gateway.tokens.lineage import BASIC_IDP, Identities
from gateway.tokens.mint import TokenIssuer
from gateway.tokens.service import TokenService
from gateway.web.asgi import ASGIApp, Receive, Scope, Send, header_values, run_lifespan
from gateway.web.responses import send_error, send_json

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["Gateway", "Runtime", "build_runtime", "check_policies_against_upstreams", "create_app"]


def check_policies_against_upstreams(settings: Settings, policies: Sequence[Policy]) -> None:
    """In proxy mode every policy must name a configured upstream, else it would have nowhere to forward.

    Websocket rules are refused too: the proxy does not forward websockets (every handshake is refused),
    so a rule allowing one would promise what `gateway serve` does not do. They are for the embedded guard.
    """
    for policy in policies:
        for rule in policy.rules:
            if rule.websocket:
                raise LoadError(
                    "gateway serve does not proxy websockets: `websocket: true` rules are for the embedded "
                    "GuardMiddleware",
                    file=policy.file,
                    line=rule.line,
                    key="websocket",
                    hint="remove `websocket: true` (every websocket handshake to the gateway is refused)",
                )
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


def upstream_scopes(policies: Sequence[Policy], upstream: str, tokens_mount: str) -> tuple[str, ...]:
    """The scopes the rules forwarded to `upstream` require (public rules and the gateway's own token
    endpoints left out): what a provider token must hold, and no more (smsgate_jwt asks for exactly these)."""
    token_base = tokens_mount.rstrip("/") + "/auth/token"
    needed = {
        scope
        for policy in policies
        if policy.upstream == upstream
        for rule in policy.rules
        if not rule.public and not (rule.full_path == token_base or rule.full_path.startswith(token_base + "/"))
        for scope in rule.scopes
    }
    return tuple(sorted(needed - {SUPERUSER}))


def version_of(settings: Settings) -> str:
    """A short hash of the config and policy files as they are on disk (what /admin/policy reports)."""
    digest = hashlib.sha256()
    for file in (settings.file, *settings.policies):
        with contextlib.suppress(OSError):
            digest.update(Path(file).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


@dataclass(eq=False)
class Runtime:
    """One validated version of the config and policies, with the objects built from it."""

    settings: Settings
    policies: tuple[Policy, ...]
    version: str
    loaded_at: float
    tokens: TokenService
    authorizer: Authorizer
    proxy: ProxyApp
    guarded: GuardMiddleware
    token_endpoints: TokenEndpoints
    jwks: dict[str, list[dict[str, object]]]
    reach: Reachability
    key_endpoints: KeyEndpoints | None = None
    in_flight: int = 0
    observe: ObservePlan | None = None  # None: neither access log nor metrics, requests are not wrapped
    cors: Cors | None = None  # None: no `cors:` section, OPTIONS goes through the policies like any method

    async def aclose(self) -> None:
        await self.proxy.aclose()
        await self.authorizer.aclose()


def build_runtime(
    settings: Settings,
    store: Store,
    *,
    loggers: Loggers | None = None,
    metrics: Metrics | None = None,
    tracer: Tracer = OFF,
) -> Runtime:
    """Load and check everything `settings` names; raises LoadError and builds nothing half-way.

    `loggers` (whose redactor learns this version's secrets and credential names), `metrics` and `tracer`
    (provider logins are its spans) are the Gateway's; without them the parts log to stdlib `smsguard.*`,
    count nothing and trace nothing.
    """
    if loggers is not None:
        loggers.redactor.add(settings.secret_values())
    policies = load_policies(settings.policies)
    check_policies_against_upstreams(settings, policies)
    vocabulary = {scope for policy in policies for scope in policy.scopes}
    tokens = TokenService(
        settings.tokens,
        store,
        vocabulary,
        log=loggers.audit if loggers else None,
        grace_s=settings.auth.leeway_s,
        identities=Identities.from_settings(settings),
    )
    authorizer = Authorizer.from_settings(
        settings, policies=policies, is_revoked=tokens.is_revoked, metrics=metrics, basic_metrics=metrics
    )
    # Token exchanges cache provider tokens in the shared store (one login across instances on Redis,
    # and across reloads); their login clients close with the proxy (ProxyApp.aclose closes every injector).
    upstream_log = loggers.upstream if loggers else None
    credentials = {
        name: build_credentials(
            up.credentials,
            name=name,
            store=store,
            log=upstream_log,
            metrics=metrics,
            scopes=upstream_scopes(policies, name, settings.tokens.mount),
        )
        for name, up in settings.upstreams.items()
    }
    if loggers is not None:
        for name, injector in credentials.items():
            loggers.redactor.add(injector.secret_values, injector.header_names | injector.query_names)
            for notice in injector.notices:  # e.g. a BSG key without live_/test_ (also in /readyz for admins)
                loggers.upstream.warning("upstream.credential_notice", upstream=name, mode=injector.mode, notice=notice)
    styles = slot_styles(policies)
    keys = _keys(settings, store, tokens, authorizer, styles, loggers)
    proxy = KeyedProxy(
        settings.upstreams, settings.proxy, credentials, log=upstream_log, metrics=metrics, store=store, slots=styles
    )
    if loggers is not None:
        for injector in proxy.test_credentials:
            loggers.redactor.add(injector.secret_values, injector.header_names | injector.query_names)
    for injector in (*credentials.values(), *proxy.test_credentials):
        injector.tracer = tracer
    issuer = tokens.issuer
    return Runtime(
        settings=settings,
        policies=policies,
        version=version_of(settings),
        loaded_at=time.time(),
        tokens=tokens,
        authorizer=authorizer,
        proxy=proxy,
        guarded=_guarded(LimitsApp.wrap(proxy, policies, store, settings, metrics), authorizer, styles),
        token_endpoints=TokenEndpoints(settings.tokens.mount, tokens, authorizer.authenticator, admin=settings.admin),
        key_endpoints=KeyEndpoints(settings.tokens.mount, keys, authorizer.authenticator, styles),
        jwks=issuer.jwks() if isinstance(issuer, TokenIssuer) else {"keys": []},
        reach=Reachability(settings.upstreams),
        observe=_observe_plan(settings, policies),
        cors=Cors(settings.cors) if settings.cors is not None else None,
    )


def _keys(
    settings: Settings,
    store: Store,
    tokens: TokenService,
    authorizer: Authorizer,
    styles: Mapping[str, str],
    loggers: Loggers | None,
) -> KeyService | None:
    """Gateway API keys (`keys:` in config.yaml): verified by the authenticator, read from policy slots."""
    if not settings.keys.enabled:
        return None
    service = KeyService(settings.keys, store, tokens, log=loggers.audit if loggers else None)
    authenticator = authorizer.authenticator
    authenticator.keys, authenticator.key_pairs = service.verify, service.verify_pair
    if styles:
        proxy = settings.proxy
        authorizer.slot = KeySlots(
            styles, authenticator, form_bytes=min(proxy.retry_buffer_bytes, proxy.max_body_bytes)
        )
    return service


def _guarded(proxy: ASGIApp, authorizer: Authorizer, styles: Mapping[str, str]) -> GuardMiddleware:
    """The guard in front of the proxy: the Observer logs and counts (not the guard), no embedding hint;
    refusals on a mount with a key slot answer in that provider's error shape."""
    on_error = ProviderErrors(styles) if styles else None
    guarded = GuardMiddleware(proxy, authorizer=authorizer, access_log="off", on_error=on_error)
    guarded.outside_hint = ""
    return guarded


def _observe_plan(settings: Settings, policies: Sequence[Policy]) -> ObservePlan | None:
    log, metrics = settings.log, settings.metrics
    if not log.access and not metrics.enabled and not settings.tracing.enabled:
        return None
    labels = {id(rule): rule_label(rule) for policy in policies for rule in policy.rules}
    return ObservePlan(access=log.access, probes=log.health_checks, count=metrics.enabled, labels=labels)


WATCH_POLL_S = 0.25  # how often reload.watch looks at the files


def _fingerprint(paths: Sequence[str]) -> tuple[tuple[int, int, int, int] | None, ...]:
    """What a change to any of `paths` changes: inode, size and modification time (None for a missing file)."""
    prints: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            found = os.stat(path)  # follows symlinks: a swapped link target is a change
        except OSError:
            prints.append(None)
        else:
            prints.append((found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns))
    return tuple(prints)


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`, or less if `stop` is set: whether it is."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


class Gateway:
    """The ASGI application behind `gateway serve`."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        env: Mapping[str, str] | None = None,
        log_sink: LogSink | None = None,
        span_exporter: SpanExporter | None = None,
    ) -> None:
        self.env = env
        self.loggers = Loggers.build(Redactor(), level=settings.log.level, sink=log_sink)
        self.metrics = Metrics()
        # The app's own TracerProvider (never the global one), closed by `shutdown`; OFF unless tracing is on.
        self.tracer = build_tracer(settings.tracing, exporter=span_exporter)
        probes = {"/healthz", "/readyz", settings.metrics.served_path or "/healthz"}
        self.observer = Observer(
            self.loggers.access, self.metrics, self._http, tracer=self.tracer, untraced=frozenset(probes)
        )
        self.store = guard_store(
            store if store is not None else open_store(settings.store), settings, self.loggers, self.metrics
        )
        self.store.trace_with(self.tracer)
        try:
            self.runtime = build_runtime(
                settings, self.store, loggers=self.loggers, metrics=self.metrics, tracer=self.tracer
            )
        except BaseException:
            self.tracer.shutdown()  # no exporter thread left behind by a gateway that never started
            raise
        self.metrics.serving(self.runtime.version)
        self._policy_loaded(self.runtime, None)
        self.last_error: str | None = None
        self.reloads = 0
        self.started = False
        self._retiring: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._stop_watching = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._sighup = False

    # The current version's parts, for callers that want "the gateway's" token service or settings.
    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def tokens(self) -> TokenService:
        return self.runtime.tokens

    @property
    def authorizer(self) -> Authorizer:
        return self.runtime.authorizer

    async def startup(self) -> None:
        await self.runtime.proxy.start()
        # reads the epoch and starts the revocation mirror and the store heartbeat (aclose stops them);
        # a store that is down now does not stop the start: requests that need it get 503 until it answers
        await self.store.start()
        self.started = True
        if self.settings.reload.watch:
            self._watcher = asyncio.create_task(self._watch())
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
            self._sighup = True

    async def shutdown(self) -> None:
        self.started = False
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        if self._watcher is not None:
            self._stop_watching.set()
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for task in list(self._retiring):
            task.cancel()
        await self.runtime.aclose()
        await self.store.aclose()
        await self.tracer.aclose()
        self.metrics.process_exiting()

    async def reload(self) -> bool:
        """Validate the files in full and swap them in; on any error keep serving the last good version."""
        async with self._reload_lock:
            current = self.runtime
            try:
                settings = load_settings(current.settings.file, env=self.env)
                if settings.store != current.settings.store:
                    raise LoadError("the store cannot change while running; restart the gateway", key="store")
                if settings.tracing != current.settings.tracing:  # the TracerProvider is the Gateway's
                    raise LoadError("tracing cannot change while running; restart the gateway", key="tracing")
                fresh = build_runtime(
                    settings, self.store, loggers=self.loggers, metrics=self.metrics, tracer=self.tracer
                )
                if fresh.version == current.version:
                    self.metrics.policy_reload("unchanged")
                    return True
                await fresh.proxy.start()
            except LoadError as exc:
                self.last_error = str(exc)
                self.metrics.policy_reload("rejected")
                self.loggers.audit.error("policy.reload_rejected", version=current.version, error=str(exc))
                return False
            self.runtime = fresh
            self.last_error = None
            self.reloads += 1
            self.metrics.policy_reload("ok")
            self.metrics.serving(fresh.version)
            self._policy_loaded(fresh, current.version)
            task = asyncio.create_task(self._retire(current))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            await self._revoke_narrowed_users(current, fresh)
            return True

    async def _revoke_narrowed_users(self, old: Runtime, new: Runtime) -> None:
        """A reload that removes a Basic user, or takes scopes from one, revokes that subject (idp basic).

        Every token already refuses such an identity per request (lineage.Identities.check); the subject
        revocation also holds if the user comes back with the old scopes. One audit line per reload.
        """
        before = old.tokens.identities.basic_users if old.tokens.identities else {}
        after = new.tokens.identities.basic_users if new.tokens.identities else {}
        narrowed = sorted(
            user
            for user, scopes in before.items()
            if user not in after or not (scopes <= after[user] or SUPERUSER in after[user])
        )
        if not narrowed or new.tokens.issuer is None:
            return
        try:
            cutoffs = [
                await new.tokens.revoke_subject(BASIC_IDP, user, caller=None, reason="config reload", audit=False)
                for user in narrowed
            ]
        except Exception as exc:  # the store is down: the per-request identity check still refuses them
            self.loggers.audit.error(
                "token.subjects_revoke_failed", idp=BASIC_IDP, subjects=narrowed, error=type(exc).__name__
            )
            return
        self.loggers.audit.warning(
            "token.subjects_revoked",
            idp=BASIC_IDP,
            subjects=narrowed,
            before=max(cutoffs),
            reason="config reload removed the users or some of their scopes",
            version=new.version,
        )

    def _policy_loaded(self, runtime: Runtime, previous: str | None) -> None:
        self.loggers.audit.info(
            "policy.loaded",
            version=runtime.version,
            previous=previous,
            trigger="startup" if previous is None else "reload",
            files=[display_path(file) for file in (runtime.settings.file, *runtime.settings.policies)],
            rules=sum(len(policy.rules) for policy in runtime.policies),
            upstreams=sorted(runtime.settings.upstreams),
        )

    async def _retire(self, old: Runtime) -> None:
        """Close a replaced version once its in-flight requests are done (bounded by the graceful timeout)."""
        grace = max((up.read_timeout_s for up in old.settings.upstreams.values()), default=0.0) + 5
        deadline = time.monotonic() + grace
        while old.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await old.aclose()

    async def _watch(self) -> None:
        """Reload when the config or a policy file changes: a stat of each file every WATCH_POLL_S, debounced.

        Polling on the event loop, not a watcher thread (watchfiles woke every 50 ms and took the GIL from the
        requests: ~4% of a loaded worker's samples); a handful of stats per poll cost microseconds. It also
        sees what inotify misses: a file replaced by rename, or a Kubernetes ConfigMap's symlink swap."""
        seen = _fingerprint(self._watched())
        while not await _stopped(self._stop_watching, WATCH_POLL_S):
            current = _fingerprint(self._watched())
            if current == seen:
                continue
            while not await _stopped(self._stop_watching, self.settings.reload.debounce_ms / 1000):
                settled = _fingerprint(self._watched())
                if settled == current:
                    break
                current = settled  # still being written: wait for a quiet debounce interval
            else:
                return
            await self.reload()
            seen = _fingerprint(self._watched())  # the watched set may have changed with the new policies

    def _watched(self) -> tuple[str, ...]:
        settings = self.settings
        return tuple(str(path) for path in (settings.file, *settings.policies))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            runtime = self.runtime
            runtime.in_flight += 1
            try:
                plan = runtime.observe
                if plan is None:
                    await self._http(runtime, scope, receive, send)
                else:
                    await self.observer(plan, runtime, scope, receive, send)
            finally:
                runtime.in_flight -= 1
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":  # the proxy forwards no websockets (policies cannot allow one): 403, never a 500
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
        if runtime.cors is None:
            await self._dispatch(runtime, scope, receive, send)
        else:  # preflights answered here; CORS headers on every other answer
            await runtime.cors(scope, receive, send, functools.partial(self._dispatch, runtime))

    async def _dispatch(self, runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        record: RequestRecord | None = scope.get(RECORD_KEY)
        if path == "/healthz":
            _mark(record, scope, path, probe=True)
            await send_json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            _mark(record, scope, path, probe=True)
            await self._ready(runtime, scope, send)
        elif path == "/.well-known/jwks.json" and runtime.jwks["keys"]:
            _mark(record, scope, path)
            await send_json(send, 200, runtime.jwks, {"cache-control": "public, max-age=300"})
        elif path == "/admin/policy":
            _mark(record, scope, path)
            try:
                await self._admin_policy(runtime, scope, send)
            except HTTPError as exc:
                if record is not None:
                    record.refuse(exc)
                await send_error(send, exc)
        elif path == runtime.settings.metrics.served_path:
            _mark(record, scope, path, probe=True)
            body, content_type = self.metrics.render(_accept(scope))
            headers = [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif runtime.key_endpoints is not None and runtime.key_endpoints.handles(path):
            await self._control(runtime.key_endpoints, scope, receive, send, record)
        elif runtime.token_endpoints.handles(path):
            await self._control(runtime.token_endpoints, scope, receive, send, record)
        else:
            await runtime.guarded(scope, receive, send)

    async def _control(
        self,
        endpoints: TokenEndpoints | KeyEndpoints,
        scope: Scope,
        receive: Receive,
        send: Send,
        record: RequestRecord | None,
    ) -> None:
        """A request the token or key endpoints answer: canonical paths only, labelled by endpoint template."""
        try:
            canonical = canonical_path(scope.get("raw_path") or scope["path"].encode())
        except HTTPError as exc:
            if record is not None:
                record.refuse(exc)
            await send_error(send, exc)
            return
        if record is not None:
            record.path = canonical
            record.route = route_label(scope["method"], endpoints.template(canonical))
        await endpoints(scope, receive, send, canonical)

    def policy_status(self, runtime: Runtime) -> dict[str, object]:
        return {
            "version": runtime.version,
            "loaded_at": runtime.loaded_at,
            "files": [runtime.settings.file, *runtime.settings.policies],
            "reloads": self.reloads,
            "last_error": self.last_error,
        }

    async def _ready(self, runtime: Runtime, scope: Scope, send: Send) -> None:
        """Status and checks for anyone (a probe); the details only for an admin caller (`/admin/policy`'s rule).

        The details name config paths, the last reload error, JWKS and store state: what `/admin/policy`
        guards. A caller whose credentials fail gets the probe's answer, never a 401 (probes send none).
        """
        checks = {
            "config": True,
            "upstreams": self.started and runtime.proxy.ready(),
            "store": await self.store.ping(),
        }
        ready = all(checks.values())
        # An issuer failing closed (JWKS past jwks_max_stale_s, or never fetched) degrades, but does not
        # unready, the gateway: its other issuers, Basic users and public routes still work. The same for an
        # upstream that cannot be reached: every instance sees the same provider, and taking them all out of
        # rotation would turn clear 502s into refused connections.
        jwks = runtime.authorizer.authenticator.verifier.jwks_status()
        upstreams = await runtime.reach.status()
        degraded = any(issuer["state"] in ("expired", "unavailable") for issuer in jwks.values()) or not all(
            found["reachable"] for found in upstreams.values()
        )
        status = ("degraded" if degraded else "ready") if ready else "not ready"
        body: dict[str, object] = {"status": status, "checks": checks}
        if await self._admin_caller(runtime, scope):  # anyone else: status and check names only
            described = runtime.proxy.notices()
            body |= {
                "policy": self.policy_status(runtime),
                "upstreams": {name: {**found, **described.get(name, {})} for name, found in upstreams.items()},
                "jwks": jwks,
                "store": self.store.health(),
            }
        await send_json(send, 200 if ready else 503, body, {"cache-control": "no-store"})

    async def _admin_caller(self, runtime: Runtime, scope: Scope) -> bool:
        """Whether the request carries credentials that `/admin/policy` would accept (any failure: no)."""
        if not runtime.settings.admin.enabled:
            return False
        try:
            self._check_admin(runtime, scope, await self._authenticate(runtime, scope))
        except HTTPError:
            return False
        return True

    def _check_admin(self, runtime: Runtime, scope: Scope, principal: Principal | None) -> None:
        admin = runtime.settings.admin
        note_principal(scope, principal)
        if principal is None:
            raise Unauthorized("authentication required")
        if principal.issuer != admin.issuer or not satisfies(principal.scopes, (admin.scope,), "any", False):
            raise Forbidden(
                f"insufficient scope: {admin.scope} from issuer {admin.issuer} required", required=admin.scope
            )

    async def _admin_policy(self, runtime: Runtime, scope: Scope, send: Send) -> None:
        admin = runtime.settings.admin
        if not admin.enabled or scope["method"] != "GET":
            raise NotFound(f"no route for {scope['method']} /admin/policy", code="no_route")
        self._check_admin(runtime, scope, await self._authenticate(runtime, scope))
        await send_json(send, 200, self.policy_status(runtime), {"cache-control": "no-store"})

    @staticmethod
    async def _authenticate(runtime: Runtime, scope: Scope) -> Principal | None:
        """The caller of a gateway endpoint, with its peer address for Basic's failed-login limits."""
        authenticator = runtime.authorizer.authenticator
        return await authenticator.authenticate(scope["headers"], peer=authenticator.peer(scope))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await run_lifespan(receive, send, self.startup, self.shutdown)


def guard_store(store: Store, settings: Settings, loggers: Loggers, metrics: Metrics) -> StoreGuard:
    """The store behind deadlines, a circuit breaker and its epoch (gateway.store.guard), counted and logged
    by this gateway; a MemoryStore also gets the configured record cap."""
    if isinstance(store, StoreGuard):
        return store
    if isinstance(store, MemoryStore):
        store.max_records = settings.store_max_records
    return StoreGuard(store, timeout_s=settings.store_timeout_s, log=loggers.audit, events=metrics)


def _mark(record: RequestRecord | None, scope: Scope, path: str, *, probe: bool = False) -> None:
    """Label a request the gateway answers itself (`GET /healthz`); probes are logged only if configured."""
    if record is not None:
        record.route = route_label(scope["method"], path)
        record.probe = probe


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    env: Mapping[str, str] | None = None,
    log_sink: LogSink | None = None,
    span_exporter: SpanExporter | None = None,
) -> Gateway:
    """Build the gateway for `settings`; raises LoadError when the policies or config do not fit together.

    `env` is where `${VAR}`s are read from on reload (default: the process environment). `log_sink` is
    where its events go (default: stdlib logging, loggers `smsguard.access|audit|upstream`; the CLI
    passes a `StreamSink`; tests a `LogCapture`). `span_exporter` (with `tracing:` on) gets every span as
    it ends instead of the configured exporter (tests: the SDK's InMemorySpanExporter).
    """
    return Gateway(settings, store=store, env=env, log_sink=log_sink, span_exporter=span_exporter)


def _accept(scope: Scope) -> str | None:
    """The request's Accept header (the metrics format a scraper negotiates), if any."""
    values = header_values(scope["headers"], b"accept")
    return b", ".join(values).decode("latin-1") if values else None
